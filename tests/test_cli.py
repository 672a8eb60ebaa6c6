import pytest

from datafree.cli import main


def _distill(tmp_path, *extra):
    return [
        "distill",
        "--method",
        "dafl",
        "--dataset",
        "digits",
        "--teacher",
        "lenet5",
        "--student",
        "lenet5_half",
        "--out",
        str(tmp_path / "run"),
        "epochs=1",
        "ep_steps=2",
        "batch_size=8",
        "synth.synthesis_batch_size=8",
        "synth.ngf=8",
        "progress=false",
        *extra,
    ]


@pytest.mark.parametrize(
    "args,needle",
    [
        (["distill", "--method", "dafll", "--dataset", "digits", "--student", "lenet5_half"], "'dafl'"),
        (["distill", "--method", "dafl", "--dataset", "digitz", "--student", "lenet5_half"], "'digits'"),
        (["distill", "--method", "dafl", "--dataset", "digits", "--student", "lenet5_hlf"], "'lenet5_half'"),
        (["distill", "--method", "dafl", "--dataset", "digits", "--student", "lenet5_half", "synth.lr_gg=1"], "'lr_g'"),
        (["distill", "--method", "dafl", "--dataset", "digits", "--student", "lenet5_half", "epochs=many"], "integer"),
        (["list", "models", "--plugin", "no_such_module_xyz"], "cannot be imported"),
        (["table", "/nonexistent/dir"], "not a directory"),
        (["data", "check", "cifar10", "--data-root", "/nonexistent/root"], "cifar-10-batches-py"),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(zoo, tmp_path, capsys, args, needle):
    assert main(args + (["--out", str(tmp_path / "x")] if args[0] == "distill" else [])) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and needle in err


def test_missing_teacher_says_how_to_train_it(zoo, tmp_path, capsys):
    code = main(
        [
            "distill",
            "--method",
            "dafl",
            "--dataset",
            "digits",
            "--teacher",
            "resnet8",
            "--student",
            "lenet5_half",
            "--out",
            str(tmp_path / "r"),
        ]
    )
    assert code == 2
    assert "datafree train-teacher --dataset digits --model resnet8" in capsys.readouterr().err


def test_distill_then_refuse_to_overwrite_then_table(zoo, tmp_path, capsys):
    assert main(_distill(tmp_path)) == 0
    before = (tmp_path / "run" / "summary.json").read_text()
    assert main(_distill(tmp_path)) == 2
    assert "--resume" in capsys.readouterr().err
    assert (tmp_path / "run" / "summary.json").read_text() == before  # nothing written is lost
    assert main(["table", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert (
        out.strip()
        == f"wrote {tmp_path / 'README.md'} (+ accuracy.csv, stability.csv, curves.png, acc_vs_hours.png beside it)"
    )
    readme = (tmp_path / "README.md").read_text()
    assert "| dafl |" in readme and "lenet5->lenet5_half" in readme
    assert main(["table", str(tmp_path), "--out", "-"]) == 0 and "| dafl |" in capsys.readouterr().out
    assert main(["plot", str(tmp_path)]) == 0 and (tmp_path / "curves.png").exists()


def test_print_config_shows_method_defaults_and_overrides(zoo, capsys):
    assert (
        main(
            [
                "distill",
                "--method",
                "deepinv",
                "--dataset",
                "digits",
                "--student",
                "lenet5_half",
                "--print-config",
                "synth.iterations=7",
                "distill.T=3",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "iterations: 7" in out and "T: 3" in out and "bn: 10" in out


def test_list_commands(capsys):
    assert main(["list", "models", "resnet*"]) == 0
    out = capsys.readouterr().out.split()
    assert "resnet18" in out and "lenet5" not in out
    assert main(["list", "datasets"]) == 0 and "digits" in capsys.readouterr().out
