"""From a recipe to a run: YAML and command-line parsing, the recipe's sections and the objects they build."""
