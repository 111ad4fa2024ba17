"""The training engine on CPU with tiny models and crops: learning, distillation terms, exact
resume, DDP over gloo with torchrun, and export into a working codec."""
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from lickd import StudentCodec, zoo
from lickd.models import build_model
from lickd.train import Trainer, load_config
from lickd.train.losses import DistillationLoss, Projection


@pytest.fixture(scope="module")
def train_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("train")
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:96, 0:112]
    for i in range(5):
        img = 128 + 80 * np.sin(xx[..., None] / (5 + i) + np.arange(3)) * np.cos(yy[..., None] / (7 + i))
        Image.fromarray(np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)).save(folder / f"{i}.png")
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(folder / "too_small.png")
    return folder


def config(tmp_path, train_dir, *extra):
    return load_config(None, (
        "architecture=mbt2018-mean", "N=8", "M=12", f"data={train_dir}", f"val_data={train_dir}", "val_images=2",
        "patch_size=64", "batch_size=3", "steps=12", "lr=1e-3", "log_every=1", "val_every=0", "ckpt_every=4",
        "tensorboard=false", f"run_dir={tmp_path / 'run'}", *extra))


def read_metrics(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def test_a_few_steps_reduce_the_loss(tmp_path, train_dir):
    cfg = config(tmp_path, train_dir, "steps=40")
    summary = Trainer(cfg, progress=False).train()
    records = [r for r in read_metrics(cfg.run_dir) if "loss" in r]
    losses = [r["loss"] for r in records]
    assert len(losses) == 40
    assert all(r["grad_norm"] > 0 for r in records)  # the log carries each step's gradient norm
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
    assert summary["step"] == 40 and "val/bpp" in summary and summary["val/bpp"] > 0
    saved = json.loads((Path(cfg.run_dir) / "config.json").read_text())
    assert saved["config"]["lmbda"] == cfg.lmbda and "torch" in saved


def test_kd_terms_are_zero_when_the_student_is_a_copy_of_the_teacher(tmp_path, train_dir):
    torch.manual_seed(0)
    teacher = build_model("mbt2018-mean", 8, 12).eval()
    teacher.update(force=True)
    info = zoo.save_weights(teacher, tmp_path / "teacher.safetensors",
                            zoo.ModelInfo(name="t", architecture="", N=0, M=0))
    cfg = config(tmp_path, train_dir, f"kd.teacher={info.path}", f"init={info.path}", "kd.z=0.3")
    trainer = Trainer(cfg, progress=False)
    x = trainer.sampler.next()
    targets = trainer._teacher_targets(x)
    terms = trainer.loss_fn(trainer.model(x), x, targets)
    for name in ("kd_y", "kd_z", "kd_x"):
        assert terms[name].item() == 0.0, name
    assert terms["loss"].item() == pytest.approx(0.6 * terms["rd"].item())
    # and a student that differs is pulled towards the teacher
    with torch.no_grad():
        trainer.model.g_a[0].weight.mul_(1.5)
    terms = trainer.loss_fn(trainer.model(x), x, trainer._teacher_targets(x))
    assert terms["kd_y"].item() > 0 and terms["kd_x"].item() > 0


def test_teacher_is_frozen_and_gets_no_gradient(tmp_path, train_dir):
    torch.manual_seed(0)
    teacher = build_model("mbt2018-mean", 16, 24)
    teacher.update(force=True)
    info = zoo.save_weights(teacher, tmp_path / "t.safetensors", zoo.ModelInfo(name="t", architecture="", N=0, M=0))
    cfg = config(tmp_path, train_dir, f"kd.teacher={info.path}", "steps=2")
    trainer = Trainer(cfg, progress=False)
    before = {k: v.clone() for k, v in trainer.teacher.state_dict().items()}
    trainer.train_step()
    assert all(p.grad is None and not p.requires_grad for p in trainer.teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in trainer.teacher.state_dict().items())
    # widths differ (student 8/12, teacher 16/24): learned projections, dropped at export
    assert set(trainer.projection.maps) == {"y"} or set(trainer.projection.maps) == {"y", "z"}
    assert any(p.grad is not None for p in trainer.projection.parameters())


def test_projection_maps_widths():
    proj = Projection({"y": 12, "z": 8}, {"y": 20, "z": 8})
    assert list(proj.maps) == ["y"]
    loss = DistillationLoss(0.01, "mse", {"y": 1.0, "rd": 0.0}, proj)
    out = {"x_hat": torch.rand(1, 3, 8, 8), "likelihoods": {"y": torch.full((1, 12, 2, 2), 0.5)},
           "latents": {"y": torch.randn(1, 12, 2, 2), "z": torch.randn(1, 8, 1, 1)}}
    teacher = {"x_hat": torch.rand(1, 3, 8, 8), "latents": {"y": torch.randn(1, 20, 2, 2), "z": torch.randn(1, 8, 1, 1)}}
    terms = loss(out, torch.rand(1, 3, 8, 8), teacher)
    assert terms["loss"].item() == pytest.approx(terms["kd_y"].item())


def test_no_kd_control_uses_only_the_rd_loss(tmp_path, train_dir):
    torch.manual_seed(0)
    teacher = build_model("mbt2018-mean", 8, 12)
    teacher.update(force=True)
    info = zoo.save_weights(teacher, tmp_path / "t.safetensors", zoo.ModelInfo(name="t", architecture="", N=0, M=0))
    cfg = config(tmp_path, train_dir, f"kd.teacher={info.path}", "kd.no_kd=true", "steps=3")
    trainer = Trainer(cfg, progress=False)
    assert trainer.teacher is None
    stats = trainer.train_step()
    assert float(stats["loss"]) == float(stats["rd"]) and "kd_y" not in stats


@pytest.mark.parametrize("layout", ["channels_last=false", "channels_last=true"])
def test_resume_after_interruption_is_bit_exact(tmp_path, train_dir, layout):
    straight = config(tmp_path / "a", train_dir, "ema=0.9", layout)
    Trainer(straight, progress=False).train()
    interrupted = config(tmp_path / "b", train_dir, "ema=0.9", layout)
    first = Trainer(interrupted, progress=False)
    for _ in range(5):  # a crash after step 5: the last checkpoint is step 4
        first.train_step()
        if first.step % 4 == 0:
            first.save_checkpoint()
    resumed = Trainer(interrupted, resume=True, progress=False)
    assert resumed.step == 4
    resumed.train()
    a = load_file(str(Path(straight.run_dir) / "checkpoint.safetensors"))
    b = load_file(str(Path(interrupted.run_dir) / "checkpoint.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_refuses_a_different_config(tmp_path, train_dir):
    cfg = config(tmp_path, train_dir, "steps=4")
    Trainer(cfg, progress=False).train()
    with pytest.raises(ValueError, match="lmbda"):
        Trainer(config(tmp_path, train_dir, "steps=8", "lmbda=0.5"), resume=True, progress=False)
    with pytest.raises(ValueError, match="kd.y"):
        Trainer(config(tmp_path, train_dir, "steps=8", "kd.y=0.9"), resume=True, progress=False)
    assert Trainer(config(tmp_path, train_dir, "steps=8"), resume=True, progress=False).step == 4


@pytest.mark.parametrize("damage", ["garbage", "truncated", "no config"])
def test_a_broken_checkpoint_gets_one_clear_error_from_resume_export_and_saved_config(tmp_path, train_dir, damage):
    from safetensors.torch import save_file

    from lickd.train.checkpoint import CHECKPOINT, export_run, saved_config
    cfg = config(tmp_path, train_dir, "steps=2", "ckpt_every=2")
    Trainer(cfg, progress=False).train()
    path = Path(cfg.run_dir) / CHECKPOINT
    if damage == "garbage":
        path.write_bytes(b"\x00" * 64)
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
    else:
        save_file({"model.x": torch.zeros(1)}, str(path), metadata={"step": "2"})
    for call in (lambda: Trainer(config(tmp_path, train_dir, "steps=4"), resume=True, progress=False),
                 lambda: export_run(cfg.run_dir, tmp_path / "x.safetensors"),
                 lambda: saved_config(cfg.run_dir)):
        with pytest.raises(ValueError, match="not a lickd training checkpoint"):
            call()
    path.unlink()
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
        saved_config(cfg.run_dir)


def test_resume_accepts_a_checkpoint_that_predates_a_new_field(tmp_path, train_dir):
    from lickd.train.checkpoint import config_changes as _config_changes
    cfg = config(tmp_path, train_dir)
    old = cfg.to_dict()
    del old["fused"], old["kd"]["hybrid_teacher"]  # written before these fields existed
    assert _config_changes(old, cfg) == []
    old["clip_max_norm"] = 5.0
    assert _config_changes(old, cfg) == ["clip_max_norm"]
    old["clip_max_norm"], old["lr"] = cfg.clip_max_norm, 1.0  # the lr schedule may change on resume
    assert _config_changes(old, cfg) == []


def test_a_run_can_end_on_mixed_quantization_and_its_log_says_when(tmp_path, train_dir):
    """quantization is a change a continuation may make (the same parameters, trained against the
    rounded latents from here on): the probe still measures the saved weights the same way, the
    steps after it are the mixed ones, and the "resumed" record names what changed."""
    from lickd.train import saved_config
    cfg = config(tmp_path, train_dir, "steps=4", "lr=1e-4")
    Trainer(cfg, progress=False).train()
    resumed = Trainer(saved_config(cfg.run_dir, ("steps=6", "quantization=mixed", "lr=3e-5")), resume=True,
                      progress=False)
    assert resumed.probe() == pytest.approx(resumed.saved_probe, rel=1e-6)
    seen = []
    forward = resumed.model.forward
    resumed.model.forward = lambda x, quality=None, quantization="noise": seen.append(quantization) or forward(
        x, quality, quantization)
    resumed.train_step()
    assert seen[-1] == "mixed"
    record, = [r for r in read_metrics(cfg.run_dir) if r.get("event") == "resumed"]
    assert record["changed"] == {"lr": [1e-4, 3e-5], "quantization": ["noise", "mixed"], "steps": [4, 6]}
    assert "warning" not in record
    with pytest.raises(ValueError, match="lmbda"):  # what defines the model still may not change
        saved_config(cfg.run_dir, ("lmbda=0.5", "quantization=mixed"))


def test_a_mixed_run_checkpointed_before_the_noise_probe_resumes_without_a_warning(tmp_path, train_dir):
    """Checkpoints written before the probe always used noise logged their run's own quantisation's
    probe (no probe_quantization in their metadata): a resume checks them with that one."""
    from lickd.train.checkpoint import CHECKPOINT, read_checkpoint, write_tensors
    cfg = config(tmp_path, train_dir, "steps=4", "quantization=mixed")
    trainer = Trainer(cfg, progress=False)
    trainer.train()
    mixed, noise = trainer.probe("mixed"), trainer.probe()
    assert mixed != pytest.approx(noise, rel=1e-4)  # the two probes differ: the check can tell them apart
    tensors, meta = read_checkpoint(cfg.run_dir)
    assert meta.pop("probe_quantization") == "noise" and meta["probe_rd"] == pytest.approx(noise)
    write_tensors(tensors, Path(cfg.run_dir) / CHECKPOINT, {**meta, "probe_rd": mixed})  # as an older lickd wrote it
    Trainer(config(tmp_path, train_dir, "steps=6", "quantization=mixed"), resume=True, progress=False)
    record = [r for r in read_metrics(cfg.run_dir) if r.get("event") == "resumed"][-1]
    assert record["probe_rd"] == pytest.approx(mixed, rel=1e-6) and "warning" not in record


def test_sigterm_checkpoints_and_stops(tmp_path, train_dir):
    cfg = config(tmp_path, train_dir, "steps=1000", "ckpt_every=1000")
    trainer = Trainer(cfg, progress=False)
    original = trainer.train_step

    def step_then_signal():
        stats = original()
        if trainer.step == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return stats

    trainer.train_step = step_then_signal
    summary = trainer.train()
    assert summary == {"step": 3, "stopped": True}
    assert Trainer(cfg, resume=True, progress=False).step == 3


@pytest.mark.parametrize("ema", ["0", "0.9"])
def test_export_loads_in_student_codec_and_compresses(tmp_path, train_dir, ema):
    cfg = config(tmp_path, train_dir, "steps=6", "name=tiny-student", f"ema={ema}")
    summary = Trainer(cfg, progress=False).train()
    codec = StudentCodec.from_file(summary["export"], device="cpu")
    assert codec.info.name == "tiny-student" and codec.info.training["steps"] == 6
    img = np.asarray(Image.open(train_dir / "0.png"))
    out = codec.decompress(codec.compress(img), output="numpy")
    assert out.shape == img.shape
    # lickd export gives the same model from the checkpoint
    from lickd.cli import main
    assert main(["export", cfg.run_dir, "-o", str(tmp_path / "e.safetensors"), "--half"]) == 0
    exported = StudentCodec.from_file(tmp_path / "e.safetensors", device="cpu")
    assert exported.info.training["steps"] == 6
    # the run's own export and lickd export hold the same parameters (EMA ones when enabled), up to fp16
    for (name, a), b in zip(codec.model.named_parameters(), exported.model.parameters()):
        torch.testing.assert_close(a.half().float(), b, rtol=0, atol=0, msg=name)
    # both on lickd's export scale table (the fp16 one rebuilt its tables on the same table)
    from lickd.entropy.models import EXPORT_SCALES_LEVELS, get_scale_table
    for c in (codec, exported):
        table = c.model.gaussian_conditional.scale_table
        assert torch.equal(table, get_scale_table(levels=EXPORT_SCALES_LEVELS))
        assert c.model.gaussian_conditional._quantized_cdf.size(0) == EXPORT_SCALES_LEVELS


def test_cli_train_and_distill(tmp_path, train_dir, capsys):
    from lickd.cli import main
    toml = tmp_path / "cfg.toml"
    toml.write_text(f'architecture = "bmshj2018-hyperprior"\nN = 8\nM = 12\ndata = "{train_dir}"\n'
                    f'val_data = "{train_dir}"\nval_images = 1\npatch_size = 64\nbatch_size = 2\nsteps = 3\n'
                    f'tensorboard = false\nrun_dir = "{tmp_path / "teacher"}"\n[kd]\ny = 0.5\n')
    assert main(["train", str(toml), "--quiet"]) == 0
    teacher = tmp_path / "teacher" / "model.safetensors"
    assert main(["distill", str(toml), "--teacher", str(teacher), "--set", f"run_dir={tmp_path / 'student'}",
                 "--set", "N=6", "--quiet"]) == 0
    assert (tmp_path / "student" / "model.safetensors").is_file()
    saved = json.loads((tmp_path / "student" / "config.json").read_text())["config"]
    assert saved["kd"]["y"] == 0.5 and saved["kd"]["teacher"] == str(teacher) and saved["N"] == 6
    assert main(["distill", str(toml), "--quiet"]) == 1  # no teacher
    assert main(["train", str(toml), "--set", "nonsense=1"]) == 1
    assert "unknown config key" in capsys.readouterr().err


@pytest.mark.parametrize("distill", [False, True], ids=["train", "distill-with-projection"])
def test_torchrun_two_processes_on_gloo_keep_ranks_in_sync(tmp_path, train_dir, distill):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun not found")
    extra = []
    if distill:  # a wider teacher: the student's y goes through a learned projection, outside DDP
        torch.manual_seed(0)
        teacher = build_model("mbt2018-mean", 8, 16)
        teacher.update(force=True)
        path = zoo.save_weights(teacher, tmp_path / "t.safetensors", zoo.ModelInfo(name="t", architecture="", N=0, M=0)).path
        extra = ["--set", f"kd.teacher={path}"]
    run_dir = tmp_path / "ddp"
    cmd = [torchrun, "--nproc_per_node", "2", "--master_port", str(29500 + os.getpid() % 1000),
           "-m", "lickd.cli", "train", "--quiet", "--set", "architecture=mbt2018-mean", "--set", "N=8", "--set", "M=12",
           "--set", f"data={train_dir}", "--set", f"val_data={train_dir}", "--set", "val_images=1",
           "--set", "patch_size=64", "--set", "batch_size=2", "--set", "steps=6", "--set", "ckpt_every=3",
           "--set", "tensorboard=false", "--set", "device=cpu", "--set", f"run_dir={run_dir}", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-6000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    prints = summary["rank_fingerprints"]
    assert len(prints) == 2 and prints[0] == prints[1]
    if distill:
        ckpt = load_file(str(run_dir / "checkpoint.safetensors"))
        assert any(k.startswith("projection.maps.y") for k in ckpt)
    # rank 0's RNG lives in the checkpoint itself (one file per run), the other ranks' beside it
    assert (run_dir / "rng-rank1.safetensors").is_file() and not (run_dir / "rng-rank0.safetensors").exists()
    # the ranks drew different crops: their sampler states differ
    r0 = load_file(str(run_dir / "checkpoint.safetensors"))["rng.sampler"]
    r1 = load_file(str(run_dir / "rng-rank1.safetensors"))["sampler"]
    assert not torch.equal(r0, r1)


def test_hybrid_teacher_supplies_the_z_target(tmp_path, train_dir):
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        t = build_model("mbt2018-mean", 8, 12)
        t.update(force=True)
        paths.append(zoo.save_weights(t, tmp_path / f"t{seed}.safetensors",
                                      zoo.ModelInfo(name=f"t{seed}", architecture="", N=0, M=0)).path)
    cfg = config(tmp_path, train_dir, f"kd.teacher={paths[0]}", f"kd.hybrid_teacher={paths[1]}", "kd.z=0.2")
    trainer = Trainer(cfg, progress=False)
    x = trainer.sampler.next()
    targets = trainer._teacher_targets(x)
    with torch.no_grad():
        assert torch.equal(targets["latents"]["z"], trainer.hybrid_teacher(x)["latents"]["z"])
        assert torch.equal(targets["latents"]["y"], trainer.teacher(x)["latents"]["y"])
    assert float(trainer.train_step()["kd_z"]) > 0


def test_fused_transforms_train_like_the_reference(tmp_path, train_dir):
    pytest.importorskip("triton")
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs a GPU or the Triton interpreter")
    from lickd.kernels import FusedSequential
    plain = Trainer(config(tmp_path / "p", train_dir, "steps=1", "batch_size=1"), progress=False)
    fused = Trainer(config(tmp_path / "f", train_dir, "steps=1", "batch_size=1", "fused=true"), progress=False)
    assert isinstance(fused.model.g_a, FusedSequential) and not isinstance(plain.model.g_a, FusedSequential)
    a, b = plain.train_step(), fused.train_step()
    assert float(b["loss"]) == pytest.approx(float(a["loss"]), rel=1e-3)


def test_ms_ssim_objective_trains(tmp_path):
    folder = tmp_path / "big"
    folder.mkdir()
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, (200, 210, 3), dtype=np.uint8)).save(folder / "0.png")
    cfg = load_config(None, ("architecture=bmshj2018-factorized", "N=8", "M=12", f"data={folder}", "val_data=none",
                             "patch_size=176", "batch_size=1", "steps=2", "metric=ms-ssim", "lmbda=8.73",
                             "tensorboard=false", f"run_dir={tmp_path / 'run'}"))
    stats = Trainer(cfg, progress=False).train_step()
    assert 0 < float(stats["ms-ssim"]) <= 1
    assert float(stats["distortion"]) == pytest.approx(8.73 * (1 - float(stats["ms-ssim"])), rel=1e-5)
    with pytest.raises(ValueError, match="patch_size > 160"):
        load_config(None, ("metric=ms-ssim", "patch_size=128", "architecture=bmshj2018-factorized"))


def test_bf16_autocast_step_keeps_entropy_models_in_fp32(tmp_path, train_dir):
    trainer = Trainer(config(tmp_path, train_dir, "amp=true", "steps=2", "batch_size=1"), progress=False)
    stats = trainer.train_step()
    assert all(bool(torch.isfinite(v)) for v in stats.values())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = trainer.model(trainer.sampler.next())
    assert all(v.dtype == torch.float32 for v in out["likelihoods"].values())


def test_channels_last_trains_the_same_model(tmp_path, train_dir):
    """NHWC is a memory layout only: same crops, noise, losses and gradients, up to convolution
    rounding (weights after Adam steps are no measure: its first updates are sign-like)."""
    runs, stats = [], []
    for layout in ("channels_last=false", "channels_last=true"):  # each seeds the global RNG: one at a time
        runs.append(Trainer(config(tmp_path / layout, train_dir, layout), progress=False))
        stats.append(runs[-1].train_step())
    assert runs[1].model.g_a[0].weight.is_contiguous(memory_format=torch.channels_last)
    for k in ("loss", "bpp", "mse", "aux"):
        torch.testing.assert_close(stats[1][k], stats[0][k], rtol=1e-5, atol=0, msg=k)
    nchw, nhwc = (dict(t.model.named_parameters()) for t in runs)
    for k, p in nchw.items():
        assert float((nhwc[k].grad - p.grad).norm()) <= 1e-4 * float(p.grad.norm()) + 1e-12, k


def test_a_step_logs_its_gradient_norm_before_clipping(tmp_path, train_dir):
    """grad_norm is the total L2 norm of the network's gradients before clip_max_norm scales them
    (the aux loss's quantiles excluded); a run without clipping logs none."""
    def network_grads(trainer):  # every gradient of the model but the quantiles', from the model itself
        return torch.stack([p.grad.double().norm() for n, p in trainer.model.named_parameters()
                            if not n.endswith("quantiles") and p.grad is not None]).norm()

    trainer = Trainer(config(tmp_path / "wide", train_dir, "clip_max_norm=1e9"), progress=False)
    stats = trainer.train_step()  # a bound no norm reaches: the gradients stay as they were
    quantiles = [p for n, p in trainer.model.named_parameters() if n.endswith("quantiles")]
    assert quantiles and all(p.grad is not None and float(p.grad.norm()) > 0 for p in quantiles)
    reference = network_grads(trainer)
    assert float(stats["grad_norm"]) == pytest.approx(float(reference), rel=1e-5)
    trainer = Trainer(config(tmp_path / "tight", train_dir, "clip_max_norm=1e-3"), progress=False)
    stats = trainer.train_step()  # the same first step: its norm is logged, its gradients cut to the bound
    assert float(stats["grad_norm"]) == pytest.approx(float(reference), rel=1e-5)
    assert float(network_grads(trainer)) == pytest.approx(1e-3, rel=1e-3)
    trainer = Trainer(config(tmp_path / "none", train_dir, "clip_max_norm=0"), progress=False)
    assert "grad_norm" not in trainer.train_step()


@pytest.mark.parametrize("name", ["teacher", "student", "cpu-pilot"])
def test_the_configs_the_readme_uses_load_and_are_what_they_say(name):
    cfg = load_config(str(Path(__file__).resolve().parents[1] / "configs" / f"{name}.toml"), ("kd.teacher=t.safetensors",))
    assert cfg.architecture == "bmshj2018-hyperprior" and cfg.M == 192
    assert cfg.N == (128 if name == "teacher" else 64)
    assert cfg.distilling and cfg.kd.y + cfg.kd.x + cfg.kd.rd == pytest.approx(1.0)


def test_variable_rate_model_trains_every_quality_and_codes_them(tmp_path, train_dir):
    cfg = config(tmp_path, train_dir, "architecture=mbt2018-mean-vr", "steps=40", "ckpt_every=40")
    trainer = Trainer(cfg, progress=False)
    before = trainer.probe()
    qualities = []
    original = trainer.sampler.qualities

    def record(levels, stratified=False):
        q = original(levels, stratified)
        qualities.extend(q.tolist())
        return q

    trainer.sampler.qualities = record
    summary = trainer.train()
    assert set(qualities) == set(range(1, 9))  # every level drawn, one per crop
    assert trainer.probe() < 0.8 * before
    codec = StudentCodec.from_file(summary["export"], device="cpu")
    assert codec.variable_rate and codec.info.quality == 3 and codec.info.lmbda is None
    img = np.asarray(Image.open(next(Path(train_dir).glob("0.png"))))
    low, high = (codec.compress(img, quality=q) for q in (1, 8))
    assert len(low) < len(high)


def test_compact_checkpoint_is_smaller_and_continues_from_the_saved_weights(tmp_path, train_dir):
    full = config(tmp_path / "full", train_dir, "steps=4")
    Trainer(full, progress=False).train()
    cfg = config(tmp_path / "compact", train_dir, "steps=4", "optimizer_state=compact")
    Trainer(cfg, progress=False).train()
    a = Path(full.run_dir) / "checkpoint.safetensors"
    b = Path(cfg.run_dir) / "checkpoint.safetensors"
    tensors = load_file(str(b))
    assert not any(k.endswith(".exp_avg") for k in tensors)
    assert all(v.dtype == torch.bfloat16 for k, v in tensors.items() if k.endswith(".exp_avg_sq"))
    assert b.stat().st_size < 0.75 * a.stat().st_size
    # continued from the folder alone: the config comes from the checkpoint, the probe from the weights
    from lickd.train import saved_config
    resumed = Trainer(saved_config(cfg.run_dir, ("steps=8",)), resume=True, progress=False)
    assert resumed.step == 4 and resumed.cfg.lmbda == cfg.lmbda and resumed.cfg.steps == 8
    assert resumed.probe() == resumed.saved_probe
    resumed.train()
    records = read_metrics(cfg.run_dir)
    assert [r["changed"] for r in records if r.get("event") == "resumed"] == [{"steps": [4, 8]}]
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 9))
    spent = [r["cpu_seconds"] for r in records if r.get("event") == "checkpoint"]
    assert spent == sorted(spent) and spent[-1] > 0  # time accumulates across the two sessions
    with pytest.raises(ValueError, match="lmbda"):
        saved_config(cfg.run_dir, ("lmbda=0.5",))


def test_amp_auto_follows_the_hardware(tmp_path, train_dir, monkeypatch):
    from lickd import cpu
    for native in (False, True):
        monkeypatch.setattr(cpu, "native_bf16", lambda native=native: native)
        trainer = Trainer(config(tmp_path / str(native), train_dir, "device=cpu"), progress=False)
        assert trainer.cfg.amp == "auto" and trainer.amp is native
    assert Trainer(config(tmp_path / "on", train_dir, "device=cpu", "amp=true"), progress=False).amp is True


@pytest.mark.parametrize("arch", ["bmshj2018-factorized", "mbt2018-mean", "mbt2018-mean-vr"])
def test_mixed_quantization_feeds_rounded_latents_to_the_synthesis(arch, rng):
    torch.manual_seed(int(rng.integers(1 << 31)))
    model = build_model(arch, 8, 12).train()
    x = torch.rand(2, 3, 64, 64)
    quality = torch.tensor([2, 7]) if model.variable_rate else None
    seen = {}
    model.g_s.register_forward_pre_hook(lambda m, args: seen.__setitem__("y", args[0]))
    with torch.random.fork_rng():
        noisy = model(x, quality, "noise")
    y_noise = seen["y"]
    mixed = model(x, quality, "mixed")
    y_mixed = seen["y"]
    # the rate terms are the same (same noise), what g_s sees is rounded
    for name in noisy["likelihoods"]:
        assert torch.equal(noisy["likelihoods"][name], mixed["likelihoods"][name]) or name == "y"
    y = noisy["latents"]["y"]
    if model.variable_rate:
        y_mixed = y_mixed / model.gain_units.inverse(quality, 2)
        y_noise = y_noise / model.gain_units.inverse(quality, 2)
    assert not torch.equal(y_noise, y_mixed)
    # g_s sees y rounded around what decoding rounds it around: the medians (factorized), or the
    # means h_s predicts from the rounded z (mean-scale), computed here independently
    if "z" in noisy["latents"]:
        z = noisy["latents"]["z"]
        medians = model.entropy_bottleneck.expanded_medians(2, 2)
        with torch.no_grad():
            _, means = model._gaussian_params(torch.round(z - medians) + medians)
        offset = means if means is not None else torch.zeros_like(y)
    else:
        offset = model.entropy_bottleneck.expanded_medians(2, 2)
    assert torch.allclose(y_mixed, torch.round(y - offset) + offset, atol=1e-4)
    # and the gradient passes straight through the rounding to g_a
    mixed["x_hat"].sum().backward()
    assert model.g_a[0].weight.grad is not None and model.g_a[0].weight.grad.abs().sum() > 0


def test_warm_start_takes_the_named_modules_across_architectures(tmp_path, train_dir):
    """A scale-hyperprior student started from a mean-scale model's transforms and gains: those
    tensors are the source's, the hyperprior is fresh (the seed's), and it trains."""
    torch.manual_seed(3)
    source = build_model("mbt2018-mean-vr", 8, 12).eval()
    source.update(force=True)
    path = zoo.save_weights(source, tmp_path / "src.safetensors",
                            zoo.ModelInfo(name="src", architecture="", N=0, M=0)).path
    cfg = config(tmp_path, train_dir, "architecture=bmshj2018-hyperprior-vr", f"init={path}",
                 "init_parts=g_a,g_s,gain_units", "steps=2")
    trainer = Trainer(cfg, progress=False)
    own, theirs = trainer.model.state_dict(), source.state_dict()
    taken = [n for n in own if n.split(".")[0] in ("g_a", "g_s", "gain_units")]
    assert taken and all(torch.equal(own[n], theirs[n]) for n in taken)
    torch.manual_seed(cfg.seed)
    fresh = build_model("bmshj2018-hyperprior-vr", 8, 12).state_dict()
    hyper = [n for n in own if n.startswith(("h_a.", "h_s."))]  # h_a has the same shapes in both
    assert hyper and all(torch.equal(own[n], fresh[n]) for n in hyper)
    assert not all(torch.equal(own[n], theirs[n]) for n in hyper if n.startswith("h_a."))
    assert trainer.train()["step"] == 2
    start = next(r for r in read_metrics(cfg.run_dir) if r.get("event") == "start")
    assert start["warm_started"] == len(taken) and start["init_parts"] == "g_a,g_s,gain_units"
    with pytest.raises(ValueError, match="names no module"):
        Trainer(config(tmp_path, train_dir, f"init={path}", "init_parts= , ", "run_dir=" + str(tmp_path / "r4")),
                progress=False)
    with pytest.raises(ValueError, match="no module 'h_z'"):
        Trainer(config(tmp_path, train_dir, "architecture=bmshj2018-hyperprior-vr", f"init={path}",
                       "init_parts=g_a,h_z", "run_dir=" + str(tmp_path / "r2")), progress=False)
    wide = zoo.save_weights(build_model("mbt2018-mean-vr", 8, 16), tmp_path / "wide.safetensors",
                            zoo.ModelInfo(name="w", architecture="", N=0, M=0)).path
    with pytest.raises(ValueError, match="in init"):
        Trainer(config(tmp_path, train_dir, "architecture=mbt2018-mean-vr", f"init={wide}", "init_parts=g_a",
                       "run_dir=" + str(tmp_path / "r3")), progress=False)
    with pytest.raises(ValueError, match="set init too"):
        config(tmp_path, train_dir, "init_parts=g_a")


def test_stratified_qualities_cover_every_level_in_each_batch(tmp_path, train_dir):
    from lickd.train.data import CropSampler, ImageFolder
    data = ImageFolder(train_dir, 32, torch.device("cpu"))
    for batch, levels in ((8, 8), (12, 8), (3, 8), (16, 8)):
        sampler = CropSampler(data, batch, seed=4)
        draws = [sampler.qualities(levels, stratified=True) for _ in range(50)]
        for q in draws:
            counts = torch.bincount(q, minlength=levels + 1)[1:]
            assert q.shape == (batch,) and int(q.min()) >= 1 and int(q.max()) <= levels
            assert int(counts.max()) - int(counts.min()) <= 1  # as even as the batch allows
        if batch < levels:  # the remainder differs from batch to batch: every level still appears
            assert set(torch.cat(draws).tolist()) == set(range(1, levels + 1))
    cfg = config(tmp_path, train_dir, "architecture=mbt2018-mean-vr", "quality_sampling=stratified", "steps=2",
                 "batch_size=4")
    assert Trainer(cfg, progress=False).train()["step"] == 2
    with pytest.raises(ValueError, match="quality_sampling"):
        config(tmp_path, train_dir, "quality_sampling=biased")


def test_scaled_crops_are_antialiased_downscales_of_a_larger_region(tmp_path, train_dir, rng):
    """crop_scale: each crop is PIL's antialiased bilinear resize of a region 1/s times the patch
    at a random place (to within one 8-bit level), the region never larger than the image, s
    within the range; the default draws the plain crops, from the random stream of before."""
    from lickd.train.data import CropSampler, ImageFolder
    folder = tmp_path / "scaled"
    folder.mkdir()
    img = rng.integers(0, 256, (96, 112, 3), dtype=np.uint8)
    img = np.clip(img * 0.3 + 90 + 60 * np.sin(np.arange(112) / 4)[None, :, None], 0, 255).astype(np.uint8)
    Image.fromarray(img).save(folder / "a.png")
    data = ImageFolder(folder, 32, torch.device("cpu"))

    def draw(g, high):  # the sampler's integer draw
        return int(torch.randint(high, (1,), generator=g))

    for scale, side in (((0.7, 0.7), 46), ((0.25, 0.3), 96)):  # a 46-pixel region; one clamped to the image
        sampler = CropSampler(data, 5, seed=3, scale=scale)
        replay = torch.Generator()
        replay.set_state(sampler.state())
        crops = sampler.next()
        assert crops.shape == (5, 3, 32, 32)
        for crop in crops:  # the draws in the sampler's order: image, scale, top, left, flips
            draw(replay, 1)
            float(torch.rand((), generator=replay))
            top, left = draw(replay, 96 - side + 1), draw(replay, 112 - side + 1)
            flip_w, flip_h = draw(replay, 2), draw(replay, 2)
            region = Image.fromarray(img[top:top + side, left:left + side])
            ref = np.asarray(region.resize((32, 32), Image.BILINEAR), dtype=float)
            ref = ref[:, ::-1] if flip_w else ref
            ref = ref[::-1] if flip_h else ref
            got = crop.permute(1, 2, 0).numpy() * 255
            assert np.allclose(got, np.round(got), atol=1e-4)  # 8-bit values
            assert np.abs(got - ref).max() <= 1.0
    # the region's side follows the scale drawn: 32 / s for s in [0.5, 1]
    sampler = CropSampler(data, 1, seed=5, scale=(0.5, 1.0))
    sides = [sampler._region(data.images[0]) for _ in range(300)]
    assert 32 <= min(sides) < 36 and 60 < max(sides) <= 64
    # the default: plain crops, drawn as before crop_scale existed (image, top, left, two flips)
    sampler = CropSampler(data, 4, seed=9)
    replay = torch.Generator()
    replay.set_state(sampler.state())
    crops = sampler.next()
    for crop in crops:
        draw(replay, 1)
        top, left = draw(replay, 96 - 32 + 1), draw(replay, 112 - 32 + 1)
        flips = [d for d, bit in ((2, draw(replay, 2)), (1, draw(replay, 2))) if bit]
        ref = data.images[0][:, top:top + 32, left:left + 32]
        assert torch.equal(crop, (ref.flip(flips) if flips else ref).float() / 255)
    assert torch.equal(sampler.state(), replay.get_state())
    cfg = config(tmp_path, train_dir, "crop_scale=0.5,1", "steps=2")
    assert cfg.crop_scale == (0.5, 1.0) and Trainer(cfg, progress=False).train()["step"] == 2
    for bad in ("0,1", "0.8,0.5", "0.5,1.5", "0.5", "nan,1"):
        with pytest.raises(ValueError, match="crop_scale"):
            config(tmp_path, train_dir, f"crop_scale={bad}")


@pytest.mark.parametrize("architecture", ["mbt2018-mean-vr", "bmshj2018-hyperprior", "bmshj2018-factorized"])
def test_widen_keeps_the_narrow_models_function(tmp_path, train_dir, architecture):
    """A teacher grown from a student (init_widen): at step 0 the wide model's latents, entropy
    parameters and reconstruction are the narrow one's to float rounding (the wider sums add
    zeros in another order; GDN couplings made non-trivial first, so the zero cross-weights are
    what keeps them), and the run trains from there."""
    source = build_model(architecture, 8, 12)
    with torch.no_grad():
        for name, p in source.named_parameters():
            if name.endswith("gamma"):  # off-diagonal couplings of every GDN
                p.copy_(p + 0.05 * torch.rand_like(p))
    source.eval().update(force=True)
    path = zoo.save_weights(source, tmp_path / "src.safetensors",
                            zoo.ModelInfo(name="src", architecture="", N=0, M=0)).path
    cfg = config(tmp_path, train_dir, f"architecture={architecture}", "N=16", "M=12", f"init={path}",
                 "init_widen=true", "steps=2")
    trainer = Trainer(cfg, progress=False)
    wide = trainer.model.eval()
    q = {"quality": 3.0} if source.variable_rate else {}
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        y, y_wide = source.analysis(x, **q), wide.analysis(x, **q)
        torch.testing.assert_close(y_wide, y)
        torch.testing.assert_close(wide.synthesis(y.round(), **q), source.synthesis(y.round(), **q))
        if hasattr(source, "h_a"):
            z, z_wide = source.h_a(y), wide.h_a(y)
            torch.testing.assert_close(z_wide[:, :8], z)
            assert z_wide[:, 8:].abs().sum() > 0  # the new channels carry signal, and nothing yet into h_s:
            torch.testing.assert_close(wide.h_s(torch.cat([z.round(), z_wide[:, 8:]], 1)), source.h_s(z.round()))
        # the whole forward pass: the reconstruction and the rate of y
        out, out_wide = source(x, **q), wide(x, **q)
        torch.testing.assert_close(out_wide["x_hat"], out["x_hat"])
        torch.testing.assert_close(out_wide["likelihoods"]["y"], out["likelihoods"]["y"])
    wide.train()  # back from the checks above: in eval mode no gradient passes the rounding into g_a
    assert trainer.train()["step"] == 2
    assert (wide.g_a[2].weight[:8, 8:] != 0).any()  # training grows the new channels in
    start = next(r for r in read_metrics(cfg.run_dir) if r.get("event") == "start")
    assert start["init_widen"] is True and start["warm_started"] > 0
    other = "mbt2018-mean"
    for bad, match in ((("N=8",), "N below 8"), (("N=16", "M=16"), "must have M=16"),
                       (("N=16", f"architecture={other}"), "widen: init is")):
        with pytest.raises(ValueError, match=match):
            Trainer(config(tmp_path, train_dir, f"architecture={architecture}", "M=12", *bad, f"init={path}",
                           "init_widen=true", "run_dir=" + str(tmp_path / "bad")), progress=False)
    with pytest.raises(ValueError, match="set init, and not init_parts"):
        config(tmp_path, train_dir, "init_widen=true")
