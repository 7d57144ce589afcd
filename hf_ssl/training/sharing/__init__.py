"""What a run gives to others: the output folder's files, model cards and Hub pushes."""
