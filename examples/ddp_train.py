"""Train a model converted by anyconv with torch's DistributedDataParallel (gloo backend, CPU).

On one machine, without arguments, it starts two processes that talk over loopback only:

    PYTHONPATH=src python examples/ddp_train.py

Launched by torchrun (which sets RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT), it joins that group
instead, so the same script runs on several machines (see the README, "Distributed training").
Needs scikit-learn for the digits (pip install 'anyconv[demo]').
"""

from __future__ import annotations

import argparse
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import anyconv
from anyconv.cli.digits import load_digits_split
from anyconv.cli.training import digits_cnn, refresh_batch_norm_statistics


def train(rank: int, world_size: int, arguments: argparse.Namespace) -> None:
    """One process: its share of every batch, gradients averaged across processes by DDP."""
    torch.manual_seed(arguments.seed)  # the same initial weights everywhere (DDP also broadcasts them)
    # AdderNet: the L1 variant with the paper's gradients, as in `anyconv demo`
    model = anyconv.convert(digits_cnn(), "l1", adder_grad=True)
    model = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    digits = load_digits_split()
    order = torch.Generator().manual_seed(arguments.seed)  # the same batch order in every process
    for epoch in range(arguments.epochs):
        model.train()
        for batch in torch.randperm(len(digits.train_labels), generator=order).split(arguments.batch_size):
            mine = batch[rank::world_size]  # this process's share of the global batch
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(
                model(digits.train_images[mine]), digits.train_labels[mine]
            )
            loss.backward()
            optimizer.step()
        refresh_batch_norm_statistics(model.module, digits.train_images[rank::world_size], 64)
        model.eval()
        with torch.no_grad():
            correct = (model(digits.test_images).argmax(1) == digits.test_labels).float().mean().item()
        if rank == 0:
            print(f"epoch {epoch + 1}/{arguments.epochs}: loss {loss.item():.3f}, test {correct:.1%}")


def local_worker(rank: int, world_size: int, port: int, arguments: argparse.Namespace) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        train(rank, world_size, arguments)
    finally:
        dist.destroy_process_group()


def free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64, help="global batch, split over processes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--processes", type=int, default=2, help="local processes when not under torchrun")
    arguments = parser.parse_args()
    if "RANK" in os.environ:  # started by torchrun: it set the rendezvous variables
        dist.init_process_group("gloo")
        try:
            train(dist.get_rank(), dist.get_world_size(), arguments)
        finally:
            dist.destroy_process_group()
    else:
        port = free_loopback_port()
        mp.spawn(local_worker, args=(arguments.processes, port, arguments), nprocs=arguments.processes)


if __name__ == "__main__":
    main()
