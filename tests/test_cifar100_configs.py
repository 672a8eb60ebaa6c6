"""CIFAR-100 values of CMI, DeepInversion, Fast-DFKD and CuDFKD come from the reference scripts (issue 13, item 7).

Each expected value is written out from the script named beside it (flags are exact decimals in the scripts and
in our YAML, so the comparisons are exact). CIFAR-10 values are checked too: the CIFAR-100 sections must not move
them.
"""

import pytest

from datafree.methods import resolve
from datafree.config import to_dict

PAIRS = [
    ("resnet34", "resnet18"),
    ("vgg11", "resnet18"),
    ("wrn40_2", "wrn16_1"),
    ("wrn40_2", "wrn40_1"),
    ("wrn40_2", "wrn16_2"),
]


def cfg(method, dataset, teacher, student):
    return resolve({"method": method, "dataset": dataset, "teacher": teacher, "student": student})


# -- CMI ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
@pytest.mark.parametrize("teacher,student", PAIRS)
def test_cmi_cifar_runs_the_scratch_script(dataset, teacher, student):
    """No CIFAR-100 CMI script exists in zju-vipa/CMI: CIFAR-100 restates
    scripts/cmi/scratch_cmi_cifar10_wrn402_wrn161.sh
    (--batch_size 128 --synthesis_batch_size 256 --g_steps 200 --lr_g 1e-3 --adv 0.5 --bn 1 --oh 1 --cr 0.8
    --cr_T 0.1 --T 20 --kd_steps 400 --ep_steps 400, default --epochs 200 --lr 0.1), like CIFAR-10."""
    c = cfg("cmi", dataset, teacher, student)
    s = c.synth
    assert (s["g_steps"], s["lr_g"], s["synthesis_batch_size"]) == (200, 1e-3, 256)
    assert (s["adv"], s["bn"], s["oh"], s["cr"], s["cr_T"]) == (0.5, 1.0, 1.0, 0.8, 0.1)
    assert (s["bank_size"], s["n_neg"], s["head_dim"], s["nz"], s["ngf"]) == (40960, 4096, 256, 256, 64)
    assert s["feature_layers"] == ("stages" if teacher == "resnet34" else "bn")  # datafree_kd.py:270-272
    assert (c.batch_size, c.epochs, c.ep_steps, c.kd_steps, c.distill["T"]) == (128, 200, 400, 400, 20)
    assert (c.optim.name, c.optim.lr, c.optim.weight_decay, c.optim.schedule, c.optim.lr_min) == (
        "sgd",
        0.1,
        1e-4,
        "cosine",
        0.0,
    )


@pytest.mark.parametrize("method", ["cmi", "deepinv", "fast", "fast2", "fast5", "fast10"])
@pytest.mark.parametrize("teacher,student", PAIRS)
def test_cifar100_equals_cifar10_where_no_script_differs(method, teacher, student):
    """CMI and DeepInversion have no CIFAR-100 script (they restate the CIFAR-10 one), and fast_cifar.sh is one
    script for both datasets: apart from the dataset itself, the two resolved configs are the same."""
    a, b = (to_dict(cfg(method, ds, teacher, student)) for ds in ("cifar10", "cifar100"))
    assert a.pop("dataset") == "cifar10" and b.pop("dataset") == "cifar100"
    assert a == b


def test_cmi_tuned_fast_preset_is_fast_datafree_cifar100_line():
    """cmi:tuned_fast = zju-vipa/Fast-Datafree scripts/cmi_cifar.sh:25-48 (--dataset cifar100, wrn40_2 -> wrn16_1):
    --batch_size 256 --g_steps 5 --cr 0 --cr_T 0.2, the rest as the scratch script; eta_min 2e-4
    (datafree_kd.py:324); synthesis batch = batch (datafree_kd.py:253-254)."""
    c = cfg("cmi:tuned_fast", "cifar100", "wrn40_2", "wrn16_1")
    s = c.synth
    assert (s["g_steps"], s["cr"], s["cr_T"], s["synthesis_batch_size"], s["lr_g"]) == (5, 0.0, 0.2, 256, 1e-3)
    assert (s["adv"], s["bn"], s["oh"]) == (0.5, 1.0, 1.0)
    assert (c.batch_size, c.epochs, c.ep_steps, c.kd_steps, c.distill["T"]) == (256, 200, 400, 400, 20)
    assert (c.optim.lr, c.optim.lr_min, c.optim.schedule) == (0.1, 2e-4, "cosine")
    # the plain entry is untouched by the preset
    assert cfg("cmi", "cifar100", "wrn40_2", "wrn16_1").synth["g_steps"] == 200
    # the pair rule still applies to the preset (resnet34's stages)
    assert cfg("cmi:tuned_fast", "cifar100", "resnet34", "resnet18").synth["feature_layers"] == "stages"


def test_cmi_tuned_fast_round_has_no_contrastive_term(zoo, tmp_path):
    """With cr 0 a round of cmi:tuned_fast runs without the contrastive term: no cr loss, no head step, and an
    empty memory bank (Fast-Datafree's contrastive.py skips the term when cr is 0)."""
    from conftest import engine_for, snapshot, unchanged

    e = engine_for(
        "cmi:tuned_fast",
        tmp_path / "r",
        synth={"synthesis_batch_size": 8, "ngf": 8, "nz": 16, "bank_size": 20, "n_neg": 12, "head_dim": 16},
    )
    synth = e.synth
    assert synth.cfg.g_steps == 5 and synth.cfg.cr == 0
    head = snapshot(synth.head)
    logs = synth.synthesize()
    assert "cr" not in logs and len(synth.pool) == 8 and len(synth.bank) == 0
    assert unchanged(synth.head, head)


# -- DeepInversion -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
@pytest.mark.parametrize("teacher,student", PAIRS)
def test_deepinv_cifar_runs_the_cmi_script(dataset, teacher, student):
    """No script produced the CIFAR-100 DeepInv cells: CIFAR-100 restates zju-vipa/CMI
    scripts/deepinv/deepinv_cifar10_wrn402_wrn161.sh (--g_steps 1000 --lr_g 0.1 --batch_size 256 --bn 10 --oh 1
    --adv 1 --T 20; tv 0.001, l2 0 from datafree_kd.py:252); deepinv:paper keeps 2000 iterations on both."""
    c = cfg("deepinv", dataset, teacher, student)
    s = c.synth
    assert (s["iterations"], s["lr_g"], s["synthesis_batch_size"]) == (1000, 0.1, 256)
    assert (s["bn"], s["oh"], s["adv"], s["adv_T"], s["adv_kind"], s["tv"], s["l2"]) == (
        10.0,
        1.0,
        1.0,
        3.0,
        "js_clamped",
        1e-3,
        0.0,
    )
    assert (c.batch_size, c.epochs, c.ep_steps, c.kd_steps, c.distill["T"]) == (256, 200, 400, 400, 20)
    assert (c.optim.name, c.optim.lr, c.optim.schedule) == ("sgd", 0.1, "cosine")
    assert cfg("deepinv:paper", dataset, teacher, student).synth["iterations"] == 2000


# -- Fast-DFKD ---------------------------------------------------------------------------------------------------

#: scripts/fast_cifar.sh (--dataset cifar100 on every line): (adv, oh) per pair
FAST_PAIR = {
    ("resnet34", "resnet18"): (1.33, 0.5),  # lines 4, 6, 8
    ("vgg11", "resnet18"): (1.0, 0.5),  # lines 12, 14, 16
    ("wrn40_2", "wrn16_1"): (1.1, 0.4),  # lines 20, 22, 24
    ("wrn40_2", "wrn40_1"): (1.1, 0.4),  # lines 28, 30, 32
    ("wrn40_2", "wrn16_2"): (1.1, 0.4),
}  # lines 36, 38, 40
#: (g_steps, lr_z, lr_g): the "-2", "-5", "-10" lines; fast1 has no script (Fast-2's rates); fast = Fast-10
FAST_PRESET = {
    "fast": (10, 0.01, 2e-3),
    "fast1": (1, 0.015, 5e-3),
    "fast2": (2, 0.015, 5e-3),
    "fast5": (5, 0.01, 3e-3),
    "fast10": (10, 0.01, 2e-3),
}


@pytest.mark.parametrize("method", sorted(FAST_PRESET))
@pytest.mark.parametrize("dataset", ["cifar100", "cifar10"])
def test_fast_cifar_runs_fast_cifar_sh(method, dataset):
    """Every flag of the script's lines: --batch_size 256 --lr 0.2 --kd_steps 400 --ep_steps 400 --bn 10 --T 20
    --bn_mmt 0.9 --warmup 20 --epochs 220 --is_maml 1 --reset_l0 1, eta_min 2e-4 (datafree_kd.py:324).
    CIFAR-10 shares them (fast_cifar.sh:2)."""
    g_steps, lr_z, lr_g = FAST_PRESET[method]
    for (teacher, student), (adv, oh) in FAST_PAIR.items():
        c = cfg(method, dataset, teacher, student)
        s = c.synth
        assert (s["g_steps"], s["lr_z"], s["lr_g"]) == (g_steps, lr_z, lr_g)
        assert (s["adv"], s["oh"], s["bn"], s["bn_momentum"]) == (adv, oh, 10.0, 0.9)
        assert (s["meta"], s["reset_l0"], s["synthesis_batch_size"], s["nz"], s["ngf"]) == (
            "fomaml",
            True,
            256,
            256,
            64,
        )
        assert (c.batch_size, c.epochs, c.warmup, c.ep_steps, c.kd_steps, c.distill["T"]) == (
            256,
            220,
            20,
            400,
            400,
            20,
        )
        assert (c.optim.lr, c.optim.lr_min, c.optim.weight_decay, c.optim.schedule) == (0.2, 2e-4, 1e-4, "cosine")


# -- CuDFKD ------------------------------------------------------------------------------------------------------


def test_cudfkd_cifar100_resnet34_resnet18_is_its_script():
    """ljrprocc/DataFree scripts/cudfkd/cudfkd_cifar100_resnet34_resnet18.sh: --batch_size 768 --epochs 400
    --begin_fraction 0.2 --end_fraction 0.8 --grad_adv 0.35 --adv 0 --T 5 --lambda_0 1 --loss l1 --lr 0.1
    --lr_g 0.001 --lmda_ent -20 --oh 1 --bn 1 --ep_steps 400 --kd_steps_interval 10 --g_steps_interval 1;
    alpha 2e-5 (datafree_kd.py:774-777)."""
    c = cfg("cudfkd", "cifar100", "resnet34", "resnet18")
    s, d = c.synth, c.distill
    assert (c.batch_size, s["synthesis_batch_size"], c.epochs, c.ep_steps, c.kd_steps) == (768, 768, 400, 400, 10)
    assert (s["adv"], s["grad_adv"], s["begin_fraction"], s["end_fraction"], s["T"]) == (0.0, 0.35, 0.2, 0.8, 5.0)
    assert (s["ent_w"], s["oh"], s["bn"], s["lr_g"], s["g_steps"], s["nz"]) == (-20.0, 1.0, 1.0, 1e-3, 1, 512)
    assert (d["loss"], d["T"], d["lambda0"], d["alpha"]) == ("l1", 5.0, 1.0, 2e-5)
    assert (c.optim.lr, c.optim.schedule) == (0.1, "cosine")


@pytest.mark.parametrize("student", ["wrn40_1", "wrn16_1", "wrn16_2"])
def test_cudfkd_cifar100_wrn_pairs_take_the_wrn_script(student):
    """cudfkd_cifar100_wrn402_wrn161.sh (it trains wrn40_1): --batch_size 1024 --epochs 500 --T 2
    --begin_fraction 0.2 --end_fraction 0.75 --grad_adv 0.12 --adv 0 --lambda_0 1 --loss kl; the other wrn40_2
    students have no script and take it."""
    c = cfg("cudfkd", "cifar100", "wrn40_2", student)
    s, d = c.synth, c.distill
    assert (c.batch_size, s["synthesis_batch_size"], c.epochs, c.ep_steps, c.kd_steps) == (1024, 1024, 500, 400, 10)
    assert (s["adv"], s["grad_adv"], s["begin_fraction"], s["end_fraction"], s["T"]) == (0.0, 0.12, 0.2, 0.75, 2.0)
    assert (d["loss"], d["T"], d["lambda0"], d["alpha"]) == ("kl", 2.0, 1.0, 2e-5)


def test_cudfkd_cifar100_vgg_has_no_script_and_takes_the_dataset_section():
    c = cfg("cudfkd", "cifar100", "vgg11", "resnet18")
    assert (c.batch_size, c.epochs, c.synth["T"], c.synth["grad_adv"]) == (768, 400, 5.0, 0.35)
    assert (c.distill["loss"], c.distill["T"], c.distill["lambda0"], c.distill["alpha"]) == ("kl", 5.0, 1.0, 2e-5)


def test_cudfkd_cifar10_values_stay():
    """CIFAR-10: cudfkd_cifar10_resnet34_resnet18.sh at the top level (+ --loss l1 in its pair), the wrn script
    for the wrn40_2 pairs; alpha 1e-4."""
    r34 = cfg("cudfkd", "cifar10", "resnet34", "resnet18")
    assert (r34.batch_size, r34.epochs, r34.synth["T"], r34.synth["grad_adv"], r34.synth["begin_fraction"]) == (
        512,
        250,
        20.0,
        0.5,
        0.25,
    )
    assert (r34.distill["loss"], r34.distill["lambda0"], r34.distill["alpha"]) == ("l1", 2.0, 1e-4)
    wrn = cfg("cudfkd", "cifar10", "wrn40_2", "wrn16_1")
    assert (wrn.batch_size, wrn.epochs, wrn.synth["adv"], wrn.synth["grad_adv"], wrn.distill["loss"]) == (
        1024,
        250,
        0.5,
        0.05,
        "kl",
    )
