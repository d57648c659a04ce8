"""DistributedDataParallel over a converted or intercepted model: two gloo processes end where one
process ends.

Each process trains on half of every batch with the mean loss; DDP averages the gradients, so
with plain SGD the parameters must equal those of one process training on the whole batch.
"""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from anyconv import convert
from anyconv.nn import Intercepted

STEPS, BATCH, LEARNING_RATE = 3, 8, 0.05


def plain_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(2, 4, 3, padding=1),
        torch.nn.Tanh(),  # not ReLU: an L1 output is negative, ReLU would stop its gradient
        torch.nn.Conv2d(4, 6, 3, stride=2, groups=2),
        torch.nn.Flatten(),
        torch.nn.Linear(6 * 3 * 3, 3),
    ).double()


def converted_model() -> torch.nn.Module:
    model = plain_model()
    convert(model, "l1", include=lambda name, layer: name == "0")  # the first conv: AdderNet
    return convert(model, "l2")  # the other: a matrix-product variant


def intercepted_model() -> torch.nn.Module:
    # every convolution of the model computed as l1 by the interception, in each process's forward
    return Intercepted(plain_model(), "l1")


MODELS = {"converted": converted_model, "intercepted": intercepted_model}


def batches():
    generator = torch.Generator().manual_seed(1)
    for _ in range(STEPS):
        images = torch.randn(BATCH, 2, 8, 8, dtype=torch.float64, generator=generator)
        yield images, torch.randint(0, 3, (BATCH,), generator=generator)


def train(model: torch.nn.Module, rank: int = 0, world_size: int = 1) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE)
    for images, labels in batches():
        half = slice(rank * BATCH // world_size, (rank + 1) * BATCH // world_size)
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(images[half]), labels[half]).backward()
        optimizer.step()


def ddp_worker(rank: int, world_size: int, port: int, results: str, kind: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        model = torch.nn.parallel.DistributedDataParallel(MODELS[kind]())
        train(model, rank, world_size)
        torch.save(model.module.state_dict(), f"{results}.{rank}")
    finally:
        dist.destroy_process_group()
    # torch 2.13 can deadlock when the DDP reducer is freed at the end of this function: its gloo
    # group joins a worker thread while holding the GIL, and that thread needs the GIL to free a
    # Python object kept in an allreduce's thread-local state. The results are saved: leave now.
    os._exit(0)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("kind", list(MODELS))
def test_two_ddp_processes_match_one_process_on_the_whole_batch(tmp_path, kind):
    results = str(tmp_path / "state")
    mp.spawn(ddp_worker, args=(2, free_port(), results, kind), nprocs=2, join=True)
    single = MODELS[kind]()
    start = {name: value.clone() for name, value in single.state_dict().items()}
    train(single)
    for rank in range(2):
        trained = torch.load(f"{results}.{rank}")
        assert list(trained) == list(single.state_dict())
        for name, value in single.state_dict().items():
            torch.testing.assert_close(trained[name], value, rtol=1e-10, atol=1e-12, msg=name)
            assert not torch.equal(value, start[name]), f"{name} did not train"
