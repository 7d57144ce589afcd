"""local_shards: what the EMA updates on each process."""

import pytest
import torch

from hf_ssl.training.optim.ema import ema_update_, local_shards


class FakeDTensor(torch.Tensor):
    """Stands for an FSDP2 DTensor: ``to_local()`` returns a view of this process's rows."""

    def to_local(self):
        return self.as_subclass(torch.Tensor)[:2]


def test_plain_tensors_pass_through_and_empty_shards_are_dropped():
    teacher, student = [torch.zeros(3), torch.zeros(0)], [torch.ones(3), torch.ones(0)]
    local_teacher, local_student = local_shards(teacher, student)
    assert len(local_teacher) == 1 and local_teacher[0] is teacher[0] and local_student[0] is student[0]


def test_dtensor_like_parameters_update_in_place_through_their_local_view():
    teacher, student = torch.zeros(4, 2).as_subclass(FakeDTensor), torch.ones(4, 2).as_subclass(FakeDTensor)
    ema_update_(*local_shards([teacher], [student]), momentum=0.75)
    assert torch.equal(teacher.as_subclass(torch.Tensor)[:2], torch.full((2, 2), 0.25))
    assert torch.equal(teacher.as_subclass(torch.Tensor)[2:], torch.zeros(2, 2))  # rows another process holds


def test_shards_that_do_not_line_up_are_refused_with_advice():
    with pytest.raises(ValueError, match="DinoNetwork"):
        local_shards([torch.zeros(5)], [torch.zeros(3)])


def test_deepspeed_partitioned_parameters_are_refused():
    partitioned = torch.zeros(0)
    partitioned.ds_tensor = torch.zeros(3)
    with pytest.raises(ValueError, match="ZeRO-3"):
        local_shards([partitioned], [torch.zeros(0)])
