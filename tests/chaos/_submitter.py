"""A process that submits batches with `submit_many` until killed, printing each batch it
got acknowledged: `python -m tests.chaos._submitter URL LEDGER BATCH FIRST` (batch numbers
from FIRST on; batch b holds the payloads b*BATCH ... (b+1)*BATCH-1)."""

from __future__ import annotations

import asyncio
import sys

from tests.crash import _crash_app


async def _main(url: str, ledger: str, batch: int, first: int) -> None:
    app = _crash_app.build(url, ledger)
    await app.open()
    print("ready", flush=True)
    for b in range(first, first + 1_000_000):
        await app.submit_many("effect", range(b * batch, (b + 1) * batch))
        print(b, flush=True)


if __name__ == "__main__":
    asyncio.run(_main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
