"""Bad face data: one clear error naming the file (and line), exit code 2 from the CLIs."""
import shutil

import pytest

from monet.config import TrainConfig
from monet.data import load_dataset
from monet.data.synthetic import write_synthetic
from monet.errors import ConfigError, DataError
from monet.train import main as train_main


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    d = tmp_path_factory.mktemp("pristine")
    write_synthetic("bp4d", d / "bp4d", subjects=6, frames=3, size=16, layout="all")
    write_synthetic("disfa", d / "disfa", subjects=3, frames=3, size=16, layout="raw")
    write_synthetic("celeba", d / "celeba", subjects=3, frames=2, size=16)
    write_synthetic("affwild2", d / "affwild2", subjects=3, frames=4, size=16)
    return d


@pytest.fixture
def copy(pristine, tmp_path):
    def make(ds):
        shutil.copytree(pristine / ds, tmp_path / ds)
        return tmp_path / ds
    return make


def load(root, ds, **kw):
    return load_dataset(TrainConfig(dataset=ds, data_root=str(root), backbone="tiny_cnn",
                                    image_size=16, **kw))


def edit_line(path, lineno, new):
    lines = path.read_text().splitlines()
    lines[lineno - 1] = new
    path.write_text("\n".join(lines) + "\n")


def test_missing_image_names_list_file_and_line(copy):
    root = copy("bp4d")
    lst = root / "list" / "BP4D_test_img_path_fold1.txt"
    victim = lst.read_text().splitlines()[1]
    (root / "img" / victim).unlink()
    with pytest.raises(DataError, match=rf"BP4D_test_img_path_fold1.txt:2: image {victim} not found"):
        load(root, "bp4d", fold=1)


def test_label_file_line_count_differs(copy):
    root = copy("bp4d")
    lab = root / "list" / "BP4D_train_label_fold2.txt"
    lab.write_text("\n".join(lab.read_text().splitlines()[:-1]) + "\n")
    with pytest.raises(DataError, match=r"BP4D_train_label_fold2.txt: 11 label lines but .*"
                                        r"BP4D_train_img_path_fold2.txt has 12 image paths"):
        load(root, "bp4d", fold=2)


def test_label_value_outside_allowed_set(copy):
    root = copy("bp4d")
    edit_line(root / "list" / "BP4D_test_label_fold1.txt", 3, "0 2 0 0 0 0 0 0 0 0 0 0")
    with pytest.raises(DataError, match=r"BP4D_test_label_fold1.txt:3: AU2 = 2; expected 0 or 1"):
        load(root, "bp4d", fold=1)
    edit_line(root / "list" / "BP4D_test_label_fold1.txt", 3, "0 1 0")
    with pytest.raises(DataError, match=r"fold1.txt:3: 3 values; expected 12"):
        load(root, "bp4d", fold=1)


def test_not_coded_nine_is_a_missing_label(copy):
    root = copy("bp4d")
    edit_line(root / "list" / "BP4D_test_label_fold1.txt", 1, "9 1 0 0 0 0 0 0 0 0 0 0")
    b = load(root, "bp4d", fold=1)
    assert b.test.mask[0].tolist() == [0.0] + [1.0] * 11 and b.test.y[0, :2].tolist() == [0.0, 1.0]


def test_empty_fold(copy):
    root = copy("bp4d")
    (root / "list" / "BP4D_test_img_path_fold3.txt").write_text("")
    (root / "list" / "BP4D_test_label_fold3.txt").write_text("")
    with pytest.raises(DataError, match=r"BP4D_test_img_path_fold3.txt: empty fold"):
        load(root, "bp4d", fold=3, layout="graphau")
    (root / "list" / "BP4D_part2_path.txt").write_text("\n")
    with pytest.raises(DataError, match=r"BP4D_part2_path.txt: empty fold"):
        load(root, "bp4d", fold=1, layout="jaanet")


def test_subject_in_two_folds(copy):
    root = copy("bp4d")
    tr = root / "list" / "BP4D_train_img_path_fold1.txt"
    te_path = (root / "list" / "BP4D_test_img_path_fold1.txt").read_text().splitlines()[0]
    subj = te_path.split("/")[0]
    edit_line(tr, 1, te_path)
    with pytest.raises(DataError, match=rf"subject {subj} is in two folds"):
        load(root, "bp4d", fold=1)
    p1 = root / "list" / "BP4D_part1_path.txt"
    p3_first = (root / "list" / "BP4D_part3_path.txt").read_text().splitlines()[0]
    edit_line(p1, 1, p3_first)
    with pytest.raises(DataError, match=rf"BP4D_part3_path.txt:1: subject {p3_first.split('/')[0]} "
                                        r"is in two folds \(part 1"):
        load(root, "bp4d", fold=1, layout="jaanet")


def test_disfa_raw_errors(copy):
    root = copy("disfa")
    f = root / "ActionUnit_Labels" / "SN002" / "SN002_au4.txt"
    edit_line(f, 2, "2,7")
    with pytest.raises(DataError, match=r"SN002_au4.txt:2: intensity 7; expected 0 to 5"):
        load(root, "disfa")
    edit_line(f, 2, "2")
    with pytest.raises(DataError, match=r"SN002_au4.txt:2: expected 'frame,intensity'"):
        load(root, "disfa")
    (root / "ActionUnit_Labels" / "SN002").rename(root / "ActionUnit_Labels" / "SN099")
    with pytest.raises(DataError, match=r"SN099 is not one of the 27 DISFA subjects"):
        load(root, "disfa")


def test_celeba_errors(copy):
    root = copy("celeba")
    attr = root / "list_attr_celeba.txt"
    lines = attr.read_text().splitlines()
    vals = lines[4].split()
    vals[21] = "0"                                  # column 21 = Male
    edit_line(attr, 5, " ".join(vals))
    with pytest.raises(DataError, match=r"list_attr_celeba.txt:5: Male = 0; expected -1 or 1"):
        load(root, "celeba")
    attr.write_text("\n".join(lines) + "\n")
    part = root / "list_eval_partition.txt"
    edit_line(part, 2, "000002.jpg 3")
    with pytest.raises(DataError, match=r"list_eval_partition.txt:2: expected 'image partition'"):
        load(root, "celeba")
    edit_line(part, 2, "000002.jpg 0")
    with pytest.raises(ConfigError, match=r"subset: expected one of"):
        load(root, "celeba", subset="hats")


def test_affwild2_errors(copy):
    root = copy("affwild2")
    ann = root / "training_set_annotations.txt"
    row = ann.read_text().splitlines()[1].split(",")
    row[3] = "9"
    edit_line(ann, 2, ",".join(row))
    with pytest.raises(DataError, match=r"training_set_annotations.txt:2: expression = 9; "
                                        r"expected 0 to 7 or -1"):
        load(root, "affwild2")
    row[3], row[1] = "0", "1.5"
    edit_line(ann, 2, ",".join(row))
    with pytest.raises(DataError, match=r":2: valence = 1.5; expected a value in \[-1, 1\] or -5"):
        load(root, "affwild2")
    row[1], row[6] = "0.1", "2"
    edit_line(ann, 2, ",".join(row))
    with pytest.raises(DataError, match=r":2: AU4 = 2; expected 0, 1 or -1"):
        load(root, "affwild2")


def test_missing_layout_and_train_cli_exit_code(tmp_path, pristine, capsys):
    with pytest.raises(DataError, match=r"no BP4D label files found"):
        load(tmp_path, "bp4d")
    with pytest.raises(ConfigError, match=r"fold: expected 1, 2 or 3"):
        load(pristine / "bp4d", "bp4d", fold=4)
    with pytest.raises(ConfigError, match=r"val_subjects: expected a share in \(0, 1\)"):
        load(pristine / "bp4d", "bp4d", val_subjects=0.0)
    rc = train_main(["--dataset", "bp4d", "--data-root", str(tmp_path), "--backbone", "tiny_cnn",
                     "--epochs", "1", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and "no BP4D label files found" in err
    assert len(err.strip().splitlines()) == 1
