"""Staging: a few batch buffers, allocated once and reused, between the tokenizer thread and the model.

Each slot holds one batch's padded token ids, attention mask, token types and input positions. On CUDA
the host side is page-locked and a side stream copies it to the slot's device buffers, so the copy
overlaps the model and never synchronizes the host: the model's stream waits for the copy's event, and
the next copy into a slot waits (on the GPU) for the event the model's stream records once it has read
it. The host side of a slot is refilled only after its copy has finished.
On CPU the same slots are used in place (no copy, no events).
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field

import torch

from .plan import PlannedBatch

FEATURES = ("input_ids", "attention_mask", "token_type_ids")


@dataclass
class Slot:
    index: int
    host: dict[str, torch.Tensor]  # flat int64 buffers (page-locked on CUDA), one per feature + "positions"
    device: dict[str, torch.Tensor]  # the same on the model's device (the host buffers themselves on CPU)
    copied: object = None  # CUDA event: the host-to-device copy has finished
    consumed: object = None  # CUDA event: the model's stream has read the device buffers


@dataclass
class StagedBatch:
    plan: PlannedBatch
    features: dict[str, torch.Tensor]  # [rows, width] each, on the model's device
    positions: torch.Tensor  # [n] int64 on the model's device
    slot: Slot = field(repr=False)


class Staging:
    """A ring of `slots` batch buffers of capacity_tokens padded tokens and capacity_rows rows each."""

    def __init__(
        self, device: torch.device, slots: int, capacity_tokens: int, capacity_rows: int, typed: bool
    ) -> None:
        self.device = device
        self.keys = FEATURES if typed else FEATURES[:2]
        self._copy_stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self._free: queue.Queue[Slot] = queue.Queue()
        self.slots: list[Slot] = []
        self.allocations = 0  # buffer sets allocated so far (tests: reuse means this stops growing)
        for i in range(slots):
            slot = Slot(i, {}, {})
            self._allocate(slot, capacity_tokens, capacity_rows)
            self.slots.append(slot)
            self._free.put(slot)

    def _allocate(self, slot: Slot, tokens: int, rows: int) -> None:
        cuda = self._copy_stream is not None
        if slot.consumed is not None:
            slot.consumed.synchronize()  # the model has read the old buffers (rare: a batch beyond every budget)
        sizes = {key: tokens for key in self.keys} | {"positions": rows}
        slot.host = {k: torch.empty(n, dtype=torch.int64, pin_memory=cuda) for k, n in sizes.items()}
        slot.device = (
            {k: torch.empty(n, dtype=torch.int64, device=self.device) for k, n in sizes.items()} if cuda else slot.host
        )
        self.allocations += 1

    def acquire(self, stop: threading.Event) -> Slot | None:
        """A free slot whose host buffers may be written (None once stop is set)."""
        while not stop.is_set():
            try:
                slot = self._free.get(timeout=0.1)
            except queue.Empty:
                continue
            if slot.copied is not None:
                slot.copied.synchronize()  # its previous batch has left the host buffers
            return slot
        return None

    def fill(self, slot: Slot, plan: PlannedBatch, store) -> StagedBatch:
        """Gather plan's texts from store into slot and start their copy to the device."""
        n, (rows, width) = len(plan.positions), plan.shape
        if rows * width > slot.host["input_ids"].numel() or n > slot.host["positions"].numel():
            # One text longer than the token budget: this slot grows to fit it (and stays that size).
            self._allocate(slot, max(rows * width, slot.host["input_ids"].numel()),
                           max(n, slot.host["positions"].numel()))
        host = {k: slot.host[k][: rows * width].view(rows, width) for k in self.keys}
        arrays = {k: v.numpy() for k, v in host.items()}
        store.gather(plan.positions, width, arrays["input_ids"], arrays["attention_mask"], arrays.get("token_type_ids"))
        slot.host["positions"][:n].numpy()[:] = plan.positions
        if self._copy_stream is None:
            return StagedBatch(plan, host, slot.host["positions"][:n], slot)
        # This runs on the tokenizer thread, outside encode's inference mode (thread-local), while the slot's
        # buffers may be inference tensors allocated under it: only inference mode may update those in place.
        with torch.inference_mode(), torch.cuda.stream(self._copy_stream):
            if slot.consumed is not None:
                self._copy_stream.wait_event(slot.consumed)  # on the GPU: the model has read this slot
            for key in (*self.keys, "positions"):
                count = n if key == "positions" else rows * width
                slot.device[key][:count].copy_(slot.host[key][:count], non_blocking=True)
            slot.copied = torch.cuda.Event()
            slot.copied.record(self._copy_stream)
        features = {k: slot.device[k][: rows * width].view(rows, width) for k in self.keys}
        return StagedBatch(plan, features, slot.device["positions"][:n], slot)

    def ready(self, staged: StagedBatch) -> None:
        """Make the current stream wait (on the device) until staged's copy has landed."""
        if staged.slot.copied is not None:
            torch.cuda.current_stream(self.device).wait_event(staged.slot.copied)

    def release(self, staged: StagedBatch) -> None:
        """The model's stream has queued everything that reads staged: the slot may be refilled."""
        slot = staged.slot
        if self._copy_stream is not None:
            slot.consumed = torch.cuda.Event()
            slot.consumed.record(torch.cuda.current_stream(self.device))
        self._free.put(slot)

