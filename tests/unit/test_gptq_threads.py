"""GPTQ's one-thread blocks in concurrent encodes: the thread count from before is restored."""

import threading

import torch

from nncodec.quant.gptq import _one_thread


def test_overlapping_one_thread_blocks_restore_the_original_count() -> None:
    before = torch.get_num_threads()
    original = 3
    torch.set_num_threads(original)
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen: dict[str, int] = {}

    def first() -> None:
        with _one_thread():
            seen["a inside"] = torch.get_num_threads()
            a_in.set()
            b_in.wait(10)
        a_out.set()

    def second() -> None:
        a_in.wait(10)
        with _one_thread():  # starts while the first holds the count at 1
            b_in.set()
            a_out.wait(10)
            seen["b inside after a ended"] = torch.get_num_threads()
        seen["b after"] = torch.get_num_threads()

    try:
        threads = [threading.Thread(target=first), threading.Thread(target=second)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        fresh: list[int] = []
        t = threading.Thread(target=lambda: fresh.append(torch.get_num_threads()))
        t.start()
        t.join(10)
        assert seen == {"a inside": 1, "b inside after a ended": 1, "b after": original}
        assert fresh == [original] and torch.get_num_threads() == original
    finally:
        torch.set_num_threads(before)
