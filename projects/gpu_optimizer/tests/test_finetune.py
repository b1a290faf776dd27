"""Fine-tuning workloads: hf: specs, LoRA, frozen params, precisions, 8-bit AdamW, accumulation,
tied weights, input validation on fake tensors, the CUDA kernel model and the reports.

Expected bytes are counted by hand from the architectures (docstrings say how).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from gpu_optimizer.cli import main
from gpu_optimizer.estimator import estimate
from gpu_optimizer.finetune import TrainingSetup, adamw8bit_state_bytes
from gpu_optimizer.models import ModelSpecError

HERE = Path(__file__)
V, D = 256, 32  # tied LM: vocabulary, width
# A Llama-style config small enough for CI: head dim 16, 4 query heads, 2 key/value heads.
LLAMA = (
    "hf:llama?hidden_size=64&intermediate_size=128&num_hidden_layers=2"
    "&num_attention_heads=4&num_key_value_heads=2&vocab_size=1000"
)
GPT2_TINY = "hf:gpt2?n_layer=2&n_embd=64&n_head=4&vocab_size=1000&n_positions=128"


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


# -- factories ------------------------------------------------------------------------


class TiedLM(nn.Module):
    """Embedding shared with the output layer, as GPT-2 and most LMs do."""

    def __init__(self, read_values: bool = False) -> None:
        super().__init__()
        self.emb = nn.Embedding(V, D)
        self.mid = nn.Linear(D, D)
        self.head = nn.Linear(D, V, bias=False)
        self.head.weight = self.emb.weight
        if read_values and float(self.emb.weight.abs().sum()) < 0:  # a data-dependent check
            raise AssertionError  # never: it only makes fake construction fail

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.mid(self.emb(input_ids))))


def _ids(batch: int, shape: tuple[int, ...]) -> dict[str, torch.Tensor]:
    return {"input_ids": torch.randint(0, V, (batch, *shape))}


def tied_lm() -> dict[str, object]:
    return {"model": TiedLM(), "make_input": _ids}


def tied_lm_reads_values() -> dict[str, object]:
    """Its constructor reads a tensor value: built for real once, then copied to fake tensors."""
    return {"model": TiedLM(read_values=True), "make_input": _ids}


def tied_lm_float_ids() -> dict[str, object]:
    return {"model": TiedLM(), "make_input": lambda b, s: {"input_ids": torch.rand(b, *s) * V}}


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))


MLP_PARAMS = 128 * 64 + 64 + 64 * 10 + 10  # 8906


def wide() -> nn.Module:
    return nn.Sequential(nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 1024))


class EvalHeavy(nn.Module):
    """Its eval forward allocates 4 MiB more than its training forward (a decoding head)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x)
        if not self.training:
            big = torch.zeros(1 << 20)  # 4 MiB
            y = y + big[: y.shape[-1]]
        return y


def eval_heavy() -> nn.Module:
    return EvalHeavy()


class Attention(nn.Module):
    """One causal self-attention with attention dropout: q, k, v of (batch, 2 heads, T, 16)."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(32, 96)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, 2, 16).permute(2, 0, 3, 1, 4)
        return nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=0.1, is_causal=True)


def attention() -> nn.Module:
    return Attention()


class Drop(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 64)
        self.drop = nn.Dropout(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc(x))


def drop() -> nn.Module:
    return Drop()


# -- tied weights and input validation ---------------------------------------------


def test_tied_weights_are_counted_once_on_every_build_path() -> None:
    """SGD momentum keeps one fp32 buffer per unique parameter: (V*D + D*D + D) * 4 bytes."""
    hand = (V * D + D * D + D) * 4
    results = {}
    for name, kwargs in {
        "fake construction": {"spec": f"{HERE}:tied_lm"},
        "real build copied to fake": {"spec": f"{HERE}:tied_lm_reads_values"},
        "real CPU": {"spec": f"{HERE}:tied_lm", "fake": False},
    }.items():
        spec = kwargs.pop("spec")
        est = estimate(spec, (16,), 2, optimizer="sgd", round_to=1, target="cpu", **kwargs)
        results[name] = (est.report.final_breakdown["optimizer_state"], est.peak_bytes)
    assert {state for state, _ in results.values()} == {hand}, results
    assert len({peak for _, peak in results.values()}) == 1, results


def test_float_token_ids_are_rejected_naming_the_input_spec() -> None:
    with pytest.raises(ModelSpecError) as info:
        estimate(f"{HERE}:tied_lm_float_ids", (16,), 2)
    message = str(info.value)
    assert "token ids of dtype float32" in message
    assert "input_ids: float32[2, 16]" in message
    assert "\n" not in message


def test_hf_tied_gpt2_counts_the_shared_embedding_once() -> None:
    """GPT-2's lm_head is wte: AdamW state is 8 bytes per unique parameter.

    E=64, vocab 1000, 128 positions, 2 layers: wte V*E + wpe P*E, per layer
    ln_1 2E + c_attn (E*3E + 3E) + c_proj (E*E + E) + ln_2 2E + c_fc (E*4E + 4E)
    + c_proj (4E*E + E), and ln_f 2E.
    """
    e, v, p, layers = 64, 1000, 128, 2
    per_layer = 2 * e + (e * 3 * e + 3 * e) + (e * e + e) + 2 * e + (e * 4 * e + 4 * e)
    per_layer += 4 * e * e + e
    params = v * e + p * e + layers * per_layer + 2 * e
    for fake in (True, False):
        est = estimate(GPT2_TINY, (32,), 2, round_to=1, fake=fake, target="cuda" if fake else None)
        state = est.report.final_breakdown["optimizer_state"]
        # The real CPU run keeps Adam's 4-byte step counters on the device (one per tensor).
        steps = 0 if fake else 4 * (2 + 12 * layers + 2)
        assert state == 8 * params + steps, fake


# -- hf: specs ------------------------------------------------------------------------


def test_hf_dict_batch_and_own_loss_equal_a_real_cpu_step() -> None:
    fake = estimate(GPT2_TINY, (32,), 2, target="cpu", round_to=1)
    real = estimate(GPT2_TINY, (32,), 2, fake=False, round_to=1)
    assert fake.peak_bytes == pytest.approx(real.peak_bytes, rel=0.01)
    # The model's own loss: cross-entropy over the logits, so the logits' gradient exists.
    assert fake.report.breakdown["activations"] > 0


@pytest.mark.slow
def test_hf_gpt2_defaults_equal_a_real_cpu_step() -> None:
    """The issue's acceptance: hf:gpt2, 512 tokens, batch 8, AdamW, without a factory file."""
    fake = estimate("hf:gpt2", (512,), 8, optimizer="adamw", target="cpu", round_to=1)
    real = estimate("hf:gpt2", (512,), 8, optimizer="adamw", fake=False, round_to=1)
    assert fake.peak_bytes == pytest.approx(real.peak_bytes, rel=0.01)


def test_hf_config_json_equals_the_same_overrides(tmp_path: Path) -> None:
    config = {
        "model_type": "llama",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 1000,
        "auto_map": {"AutoModel": "evil.Model"},  # remote code is never loaded
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    from_file = estimate(f"hf:{path}", (16,), 2, round_to=1)
    from_query = estimate(LLAMA, (16,), 2, round_to=1)
    assert from_file.peak_bytes == from_query.peak_bytes
    assert estimate(f"hf:{tmp_path}", (16,), 2, round_to=1).peak_bytes == from_file.peak_bytes


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("hf:meta-llama/Llama-3.2-1B", "never downloads from the hub"),
        ("hf:gpt3", "not a built-in transformers config class"),
        ("hf:gpt2:detection", "unknown task 'detection'"),
        ("hf:bert:causal-lm?is_decoder=true&x", "key=value"),
        ("hf:vit:causal-lm", "vit has no causal-lm head"),
    ],
)
def test_hf_spec_errors(spec: str, needle: str) -> None:
    with pytest.raises(ModelSpecError) as info:
        estimate(spec, (16,), 1)
    assert needle in str(info.value)


# -- fine-tuning setups -------------------------------------------------------------


def test_lora_state_is_adapter_params_times_8_and_frozen_base_has_no_gradients() -> None:
    """r=8 on q_proj (64 -> 4 heads x 16) and v_proj (64 -> 2 kv heads x 16), 2 layers:
    2 * (8 * (64 + 64) + 8 * (64 + 32)) = 3584 adapter parameters."""
    adapters = 2 * (8 * (64 + 64) + 8 * (64 + 32))
    setup = TrainingSetup(lora_r=8, lora_targets=("q_proj", "v_proj"))
    est = estimate(LLAMA, (32,), 2, setup=setup, round_to=1, dtype="bf16")
    assert est.report.final_breakdown["optimizer_state"] == adapters * 8
    assert int(est.report.category_timeline["gradients"].max()) == adapters * 4
    assert est.to_dict()["setup"]["lora_r"] == 8


def test_frozen_parameters_have_no_gradient_or_state() -> None:
    """Freezing the first Linear (128*64 + 64) leaves 64*10 + 10 = 650 trainable parameters."""
    est = estimate(f"{HERE}:mlp", (128,), 4, setup=TrainingSetup(freeze=("0.*",)), round_to=1)
    assert int(est.report.category_timeline["gradients"].max()) == 650 * 4
    assert est.report.final_breakdown["optimizer_state"] == 650 * 8
    with pytest.raises(ModelSpecError, match="matches no parameter"):
        estimate(f"{HERE}:mlp", (128,), 4, setup=TrainingSetup(freeze=("nope.*",)))


def test_adamw8bit_state_is_bitsandbytes_layout() -> None:
    """Weight 128x64 = 8192 >= 4096: 2 uint8 buffers (16384 B) + 2 x 32 fp32 absmax (256 B)
    + the two shared 256-entry fp32 maps (2048 B); the bias (64), 64x10 weight (640) and
    bias (10) are under 4096 elements: two fp32 buffers, 8 B each."""
    hand = 16384 + 256 + 2048 + 8 * (64 + 640 + 10)
    assert adamw8bit_state_bytes([8192, 64, 640, 10]) == hand
    est = estimate(f"{HERE}:mlp", (128,), 4, optimizer="adamw8bit", round_to=1)
    assert est.report.final_breakdown["optimizer_state"] == hand


@pytest.mark.parametrize(
    ("dtype", "param_bytes", "state_bytes"),
    [("bf16-true", 2, 4), ("bf16-master", 2, 12), ("bf16", 4, 8), ("fp32", 4, 8)],
)
def test_precisions_and_master_weights(dtype: str, param_bytes: int, state_bytes: int) -> None:
    """true: half params and half Adam state; master: half params, fp32 master + fp32 state;
    plain bf16 is autocast over fp32 parameters (they are the master weights)."""
    est = estimate(f"{HERE}:mlp", (128,), 4, dtype=dtype, round_to=1)
    assert est.report.final_breakdown["parameters"] == MLP_PARAMS * param_bytes
    assert est.report.final_breakdown["optimizer_state"] == MLP_PARAMS * state_bytes
    assert int(est.report.category_timeline["gradients"].max()) == MLP_PARAMS * param_bytes


def test_gradient_accumulation_keeps_gradients_through_the_next_forward() -> None:
    one = estimate(f"{HERE}:mlp", (128,), 4, round_to=1)
    four = estimate(f"{HERE}:mlp", (128,), 4, round_to=1, setup=TrainingSetup(grad_accum=4))
    extra = four.report.phase_peaks["forward"] - one.report.phase_peaks["forward"]
    # All fp32 gradients, plus the 4-byte loss / 4 scalar.
    assert extra == pytest.approx(MLP_PARAMS * 4, abs=8)


# -- CUDA kernel model -------------------------------------------------------------------


def _acts(est: object) -> int:
    return int(est.report.activation_peak_bytes)  # type: ignore[attr-defined]


def test_cuda_attention_stores_no_t_squared_and_cpu_math_does() -> None:
    """On CUDA (efficient kernel for fp32) everything saved is linear in T: doubling T doubles
    the activations exactly. The CPU runs SDPA with dropout on its math path and keeps the
    (B, H, T, T) probabilities and dropout mask: more than double."""
    cuda = [_acts(estimate(f"{HERE}:attention", (t, 32), 2, round_to=1)) for t in (64, 128)]
    cpu = [
        _acts(estimate(f"{HERE}:attention", (t, 32), 2, round_to=1, target="cpu"))
        for t in (64, 128)
    ]
    assert cuda[1] == 2 * cuda[0]
    assert cpu[1] > 2 * cpu[0] + 2 * 2 * 64 * 64 * 4  # at least the growth of one T^2 fp32 map
    est = estimate(f"{HERE}:attention", (64, 32), 2, round_to=1)
    assert any("efficient x1" in n for n in est.notes)
    bf16 = estimate(f"{HERE}:attention", (64, 32), 2, round_to=1, dtype="bf16")
    assert any("flash x1" in n for n in bf16.notes)


def test_sdpa_kernel_rule() -> None:
    from gpu_optimizer.cuda_kernels import sdpa_kernel_for

    def t(dtype: torch.dtype, head: int = 64) -> torch.Tensor:
        return torch.empty(1, 2, 8, head, dtype=dtype, device="meta")

    half, full = t(torch.bfloat16), t(torch.float32)
    assert sdpa_kernel_for(half, half, half, False, (8, 6)) == "flash"
    assert sdpa_kernel_for(half, half, half, True, (8, 6)) == "efficient"  # a mask: no flash
    assert sdpa_kernel_for(half, half, half, False, (7, 5)) == "efficient"  # Turing: no flash
    assert sdpa_kernel_for(full, full, full, False, (8, 6)) == "efficient"
    odd = t(torch.float16, 30)  # 30 half elements: not a multiple of 16 bytes
    assert sdpa_kernel_for(odd, odd, odd, True, (8, 6)) == "math"


def test_cuda_dropout_mask_is_bool() -> None:
    """Dropout on (4, 64) fp32: CUDA saves a 1-byte mask, the CPU a 4-byte one: 3*256 B apart."""
    cuda = _acts(estimate(f"{HERE}:drop", (64,), 4, round_to=1))
    cpu = _acts(estimate(f"{HERE}:drop", (64,), 4, round_to=1, target="cpu"))
    assert cpu - cuda == 3 * 4 * 64


def test_cuda_target_keeps_adam_step_counters_on_the_host() -> None:
    cuda = estimate(f"{HERE}:mlp", (128,), 2, round_to=1)
    cpu = estimate(f"{HERE}:mlp", (128,), 2, round_to=1, target="cpu")
    assert cuda.report.final_breakdown["optimizer_state"] == 8 * MLP_PARAMS
    assert cpu.report.final_breakdown["optimizer_state"] == 8 * MLP_PARAMS + 4 * 4


def test_predicted_cuda_adds_cublas_workspaces() -> None:
    from gpu_optimizer.cuda_kernels import CUBLAS_WORKSPACE_BYTES, CUBLAS_WORKSPACE_BYTES_SM90

    est = estimate(f"{HERE}:mlp", (128,), 2)
    pred = est.predicted_cuda()
    assert pred["max_memory_allocated_bytes"] == est.peak_bytes + 2 * CUBLAS_WORKSPACE_BYTES
    h100 = estimate(f"{HERE}:mlp", (128,), 2, compute_capability=(9, 0))
    assert h100.predicted_cuda()["workspace_bytes"] == 2 * CUBLAS_WORKSPACE_BYTES_SM90


# -- reports ------------------------------------------------------------------------------


def test_activation_peak_is_reported_when_the_peak_is_in_the_optimizer(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Batch 1 through 2 x Linear(1024, 1024): the first Linear keeps its input (4 KiB) and the
    ReLU its output (4 KiB, also the second Linear's input): 8 KiB, while the peak is in the
    AdamW step."""
    argv = ["estimate", f"{HERE}:wide", "--input-shape", "1024", "--batch-size", "1"]
    assert main([*argv, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["peak_phase"] == "optimizer" and data["breakdown"]["activations"] == 0
    assert data["activation_peak"]["bytes"] == 8192
    assert data["activation_peak"]["bytes_per_sample"] == 8192
    assert data["activation_peak"]["phase"] == "forward"
    tops = {m["module"]: m["activation_bytes"] for m in data["activation_peak"]["top_modules"]}
    assert tops == {"<none>": 4096, "1": 4096}  # the input (made outside modules), ReLU's output
    assert set(data["phase_peaks"]) >= {"forward", "backward", "optimizer"}
    assert main(argv) == 0
    assert "activation peak 8.00 KiB (8.00 KiB per sample) in forward" in capsys.readouterr().out


def test_eval_step_that_sets_the_peak_is_warned(capsys: pytest.CaptureFixture[str]) -> None:
    """Eval forward with AdamW state alive, in 512-byte CUDA blocks: fc.weight (1 KiB) and
    fc.bias (64 B -> 512), two Adam buffers each, the input, fc's output and the sum
    (128 B -> 512 each), and the 4 MiB buffer."""
    argv = ["estimate", f"{HERE}:eval_heavy", "--input-shape", "16", "--batch-size", "1..2"]
    assert main([*argv, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ranges"]["planned_batch_size"] == 2
    params = 1024 + 512
    hand = params + 2 * params + 3 * 512 + 4 * 2**20
    assert data["step_checks"]["eval"] == hand
    assert any("evaluation step" in w for w in data["warnings"])


def test_batch_range_with_budget_plans_the_largest_that_fits(
    capsys: pytest.CaptureFixture[str],
) -> None:
    budget = 600 * 2**20
    argv = ["estimate", f"{HERE}:wide", "--input-shape", "1024", "--batch-size", "1..4096"]
    assert main([*argv, "--budget", str(budget), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    b = data["ranges"]["planned_batch_size"]
    assert 1 < b < 4096
    assert data["predicted_cuda"]["device_bytes"] <= budget
    over = estimate(f"{HERE}:wide", (1024,), b + 1, check_steps=True)
    assert over.predicted_cuda()["device_bytes"] > budget


def test_seq_len_range_plans_the_longest(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["estimate", GPT2_TINY, "--seq-len", "16..64", "--batch-size", "2", "--json"]
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["input_shape"] == [64] and data["ranges"]["seq_len"] == [16, 64]
    assert data["peak_bytes"] == estimate(GPT2_TINY, (64,), 2).peak_bytes


def test_tensorboard_scalars(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    est = estimate(f"{HERE}:mlp", (128,), 4)
    from gpu_optimizer.plots import write_tensorboard

    write_tensorboard(est.report, tmp_path, "m")
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    for phase, peak in est.report.phase_peaks.items():
        assert acc.Scalars(f"m/phase_peak/{phase}")[0].value == peak
    assert max(s.value for s in acc.Scalars("m/live_bytes")) == est.peak_bytes


def test_cli_help_and_argument_errors_do_not_import_torch() -> None:
    code = (
        "import sys\n"
        "from gpu_optimizer.cli import main\n"
        "for argv in (['--help'], ['estimate', 'x', '--batch-size', '0..2']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit as e:\n"
        "        print(e.code)\n"
        "print('torch' in sys.modules)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert proc.stdout.split()[-3:] == ["0", "2", "False"]
    assert "positive integer or a range" in proc.stderr


def test_memory_snapshot_needs_cuda(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    argv = ["profile", f"{HERE}:mlp", "--input-shape", "128", "--batch-size", "2"]
    assert main([*argv, "--device", "cpu", "--memory-snapshot", str(tmp_path / "s.pickle")]) == 2
    assert "needs --device cuda" in capsys.readouterr().err


def test_service_specs_accept_builtin_hf_and_fence_config_files(tmp_path: Path) -> None:
    from gpu_optimizer.jobs.specs import SpecError, UserCodeRefused, worker_spec

    assert worker_spec("hf:gpt2", None) == "hf:gpt2"
    assert worker_spec(LLAMA, None) == LLAMA
    with pytest.raises(UserCodeRefused):
        worker_spec("hf:/etc/config.json", tmp_path)
    (tmp_path / "c.json").write_text("{}")
    assert worker_spec("hf:c.json", tmp_path) == f"hf:{tmp_path / 'c.json'}"
    with pytest.raises(SpecError):
        worker_spec("hf:missing.json", tmp_path)


# -- on a GPU ------------------------------------------------------------------------------


@pytest.mark.gpu
def test_memory_snapshot_on_cuda(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import pickle

    path = tmp_path / "snap.pickle"
    argv = ["profile", f"{HERE}:mlp", "--input-shape", "128", "--batch-size", "8"]
    assert main([*argv, "--memory-snapshot", str(path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["snapshot"] == str(path)
    snapshot = pickle.loads(path.read_bytes())
    assert "segments" in snapshot and "device_traces" in snapshot


@pytest.mark.gpu
@pytest.mark.parametrize(
    ("spec", "setup", "dtype"),
    [
        (GPT2_TINY, TrainingSetup(), "bf16"),
        (LLAMA, TrainingSetup(lora_r=8, lora_targets=("q_proj", "v_proj")), "bf16"),
        (LLAMA, TrainingSetup(), "fp32"),
    ],
)
def test_hf_estimate_matches_cuda(spec: str, setup: TrainingSetup, dtype: str) -> None:
    from gpu_optimizer.profiler import profile

    predicted = estimate(spec, (256,), 8, setup=setup, dtype=dtype)
    measured = profile(spec, (256,), 8, device="cuda", setup=setup, dtype=dtype)
    assert measured.ok and measured.allocator is not None
    allocated = measured.allocator["max_memory_allocated_bytes"]
    assert predicted.predicted_cuda()["max_memory_allocated_bytes"] == pytest.approx(
        allocated, rel=0.10
    )


def test_service_request_carries_the_fine_tuning_setup() -> None:
    """What a worker runs for POST /profiles with LoRA fields: the adapters' AdamW state
    (3584 x 8 B, every tensor a multiple of 512 B) is in the result."""
    from gpu_optimizer.api.schemas import ProfileRequest
    from gpu_optimizer.jobs.worker import run_profile

    body = ProfileRequest.model_validate(
        {
            "model": LLAMA,
            "input_shape": [32],
            "batch_size": 2,
            "dtype": "BF16",
            "lora_r": 8,
            "lora_targets": ["q_proj", "v_proj"],
        }
    )
    result = run_profile(body.model_dump(mode="json"), lambda _p: None)
    assert result["setup"]["lora_targets"] == ["q_proj", "v_proj"]
    assert result["breakdown"]["optimizer_state"] == 3584 * 8
    assert result["breakdown"]["gradients"] in (0, 3584 * 4)


def test_plan_with_a_batch_range_caps_and_checks_steps(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The MLP fits thousands of samples in 8 GiB: a 1..64 range caps every plan at 64."""
    machines = tmp_path / "m.toml"
    machines.write_text(
        '[[machine]]\nname = "a"\ngpu = "G"\nvram_bytes = 8589934592\ncompute_capability = "8.6"\n'
    )
    argv = ["plan", f"{HERE}:mlp", "--input-shape", "128", "--batch-size", "1..64"]
    assert main([*argv, "--machines", str(machines), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    machine = data["machines"][0]
    assert machine["recommended_batch"] == machine["batch_plain"] == 64
    assert data["ranges"]["batch_size"] == [1, 64]
    assert data["step_checks"]["batch_size"] == 64 and data["step_checks"]["eval"] > 0
