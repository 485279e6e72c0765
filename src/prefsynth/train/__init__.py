"""Stage 7, train: a LoRA adapter on a built dataset with TRL (DPO on `paired`, KTO on `unpaired`), then an
evaluation that says whether the data did what it was built for.

One concept per module, in the order `run.train` uses them:
- `config`: TrainConfig (the `prefsynth train` flags) and its offline checks;
- `data`: the dataset, from a folder or a pinned Hub revision (load_data, kto_order);
- `collate`: prompt-side truncation, so completions survive max_length (fit_prompt, collators);
- `trainer`: device, base model, TRL trainer with LoRA, schedule, progress (fit);
- `evaluate`: base vs tuned reviews of validation titles, judged; win rate and sign test;
- `report`: TrainResult, the verdict and the output folder's README.md;
- `push`: the output folder to a Hub model repo, through `prefsynth.hub` like publish;
- `run`: train(): validate -> load -> fit -> evaluate -> save -> push.

The `evaluate` and `push` functions are not re-exported here: their names are their modules'.
"""

from prefsynth.train.collate import fit_prompt, truncation_stats
from prefsynth.train.config import EvalSettings, LoraSettings, TrainConfig
from prefsynth.train.data import Data, kto_order, load_data
from prefsynth.train.evaluate import sign_test, summarize_evaluation
from prefsynth.train.report import TrainResult, render_report, verdict
from prefsynth.train.run import plain_step, train
from prefsynth.train.trainer import Device, resolve_device

__all__ = [
    "Data", "Device", "EvalSettings", "LoraSettings", "TrainConfig", "TrainResult", "fit_prompt", "kto_order",
    "load_data", "plain_step", "render_report", "resolve_device", "sign_test", "summarize_evaluation", "train",
    "truncation_stats", "verdict",
]
