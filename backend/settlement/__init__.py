"""Settlement: each sealed epoch goes on chain exactly once — commit, then its chunks.

The Settlement contract refuses a second commit of an epoch and a second application of a
chunk, so a duplicate transaction can never double-mint. What the worker adds is that nothing
is *missing* and nothing is sent blindly:

* **Plan.** When an epoch's settlement starts, its steps are written down once: step 0 commits
  the epoch, then one step per chunk of credits (mints) and per chunk of payments (burns), with
  fixed chunk ids. The plan never changes, so a restarted worker resumes the same chunks.
* **Intent before send.** A step's transaction is prepared and signed by the chain layer's
  transaction pipeline (``gridpoints_chain.transactions``: gas margin, fees, the one nonce
  manager), then stored (``settlement_attempts``: nonce, hash, raw bytes) in a committed
  database transaction, and only then handed back to the pipeline to broadcast. After a crash
  the worker knows every transaction it may have sent.
* **The chain is the truth.** Before sending anything for a step the worker asks the contract
  whether the step's effect is already there (``lastEpochId``/``getEpoch``,
  ``isChunkApplied``). If it is, the step is confirmed from the receipt of the attempt that did
  it; if not, a stored attempt whose nonce is still next is re-broadcast byte for byte, and
  otherwise a new attempt is signed with the account's current nonce.
* **Reconcile from the fork point.** A confirmed step stays under watch until it is *final*:
  its block canonical at or below the chain's finalized block (the node's ``finalized`` tag,
  or ``finality_blocks`` below the head). Every round checks one block, the *tip*: the highest
  block of a confirmed step, verified with every other confirmed step's block. Since a block's
  hash commits to its ancestors, the tip still canonical means every confirmed step still is,
  however many blocks came since. If it is not (a reorg, an ``evm_revert``, a node restored
  from an older state), and on start-up and after every error, a full reconciliation checks
  the newest final step's block (walking down the final ones while the chain lacks them) and
  every step that is not final, and re-opens each step whose block the chain no longer has:
  it goes back to ``planned`` with its epoch back to ``sealed``, and the worker finds it on
  chain in another block or sends it again.
* **Confirmations.** A step is confirmed only once its block has ``confirmations`` blocks on
  top and is still canonical.
* **Bounded on chain.** The commit names the root of the epoch's plan
  (``gridpoints_protocol.plan``: one leaf per planned chunk, computed from the stored steps and
  entries, so a resent commit names the same root) and each chunk goes with its inclusion
  proof. The epoch's chunks apply only after the contract's challenge window: while it is
  open the contract refuses them (ChallengeWindowOpen, at gas estimation, nothing is sent), the
  worker notes until when (``challenge_wait``, for /healthz) and the next round tries again.
  If the guardian voids the epoch in that window, the chain no longer holds it: its confirmed
  steps are re-opened and the epoch committed again (with the same plan: a guardian that voids
  an honest epoch only delays it).

Crash points (``backend.faults``) sit exactly between persisting an intent, sending it,
receiving its receipt and recording it, so the fault tests kill the real process there.
"""

from __future__ import annotations

from backend.settlement.chain_view import SettlementError
from backend.settlement.plan import (
    SettlementConfig,
    StepView,
    epoch_plan,
    plan_steps,
    settlement_status,
    steps_of,
)
from backend.settlement.settler import ChallengeWait, Reconciliation, Settler

__all__ = [
    "ChallengeWait",
    "Reconciliation",
    "SettlementConfig",
    "SettlementError",
    "Settler",
    "StepView",
    "epoch_plan",
    "plan_steps",
    "settlement_status",
    "steps_of",
]
