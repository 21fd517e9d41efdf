"""Metadata loaders for Waterbirds, CelebA, MultiNLI and CivilComments.

Each test writes a tiny fixture in the published on-disk layout into tmp_path and checks
labels, groups, splits and error messages against values worked out by hand.
"""
import os

import numpy as np
import pytest
import torch

from pydebias.data import EmbeddingSet
from pydebias.data.standard import (StandardSplit, load_celeba, load_civilcomments,
                                    load_multinli, load_waterbirds, to_embedding_set)

# -- Waterbirds ---------------------------------------------------------------------------

WATERBIRDS_CSV = """\
img_id,img_filename,y,split,place,place_filename
1,001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg,1,0,1,/o/ocean/00002178.jpg
2,001.Black_footed_Albatross/Black_Footed_Albatross_0009_34.jpg,1,0,1,/l/lake/natural/00000065.jpg
3,001.Black_footed_Albatross/Black_Footed_Albatross_0002_55.jpg,1,0,0,/b/bamboo_forest/00000116.jpg
4,002.Laysan_Albatross/Laysan_Albatross_0002_1027.jpg,1,1,0,/f/forest/broadleaf/00003224.jpg
5,010.Red_winged_Blackbird/Red_Winged_Blackbird_0017_583.jpg,0,0,0,/b/bamboo_forest/00000290.jpg
6,010.Red_winged_Blackbird/Red_Winged_Blackbird_0022_5270.jpg,0,0,0,/f/forest/broadleaf/00001163.jpg
7,010.Red_winged_Blackbird/Red_Winged_Blackbird_0040_3888.jpg,0,1,1,/o/ocean/00003016.jpg
8,011.Rusty_Blackbird/Rusty_Blackbird_0015_6885.jpg,0,2,1,/l/lake/natural/00002101.jpg
9,011.Rusty_Blackbird/Rusty_Blackbird_0020_6711.jpg,0,2,0,/b/bamboo_forest/00004012.jpg
10,002.Laysan_Albatross/Laysan_Albatross_0033_658.jpg,1,2,1,/o/ocean/00000877.jpg
"""


def _write(path, text):
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)


@pytest.fixture
def waterbirds_root(tmp_path):
    _write(tmp_path / "metadata.csv", WATERBIRDS_CSV)
    return tmp_path


def test_waterbirds_splits_labels_groups(waterbirds_root):
    d = load_waterbirds(waterbirds_root)
    assert set(d) == {"train", "val", "test"}
    tr, va, te = d["train"], d["val"], d["test"]
    assert (len(tr), len(va), len(te)) == (5, 2, 3)
    # train rows: ids 1,2,3,5,6 -> (y, place) = (1,1),(1,1),(1,0),(0,0),(0,0)
    assert tr.labels.tolist() == [1, 1, 1, 0, 0]
    assert tr.groups.tolist() == [3, 3, 2, 0, 0]
    assert tr.attributes.tolist() == [1, 1, 0, 0, 0]
    assert tr.indices.tolist() == [0, 1, 2, 4, 5]
    assert tr.group_counts().tolist() == [2, 0, 1, 2]
    assert va.groups.tolist() == [2, 1]
    assert te.groups.tolist() == [1, 0, 3]
    assert tr.labels.dtype == np.int64 and tr.groups.dtype == np.int64
    assert tr.paths_or_texts[2] == os.path.join(
        str(waterbirds_root), "001.Black_footed_Albatross/Black_Footed_Albatross_0002_55.jpg")
    assert (tr.n_classes, tr.n_groups) == (2, 4)
    assert tr.group_names[1] == "landbird_water" and tr.group_names[2] == "waterbird_land"


def test_waterbirds_single_split_and_pathlike(waterbirds_root):
    te = load_waterbirds(str(waterbirds_root), split="test")
    assert isinstance(te, StandardSplit)
    assert te.split == "test" and te.name == "waterbirds"
    assert te.labels.tolist() == [0, 0, 1]
    with pytest.raises(ValueError, match="split: expected one of"):
        load_waterbirds(waterbirds_root, split="validation")


def test_waterbirds_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        load_waterbirds(tmp_path)
    msg = str(e.value)
    assert os.path.join(str(tmp_path), "metadata.csv") in msg
    assert "Waterbirds" in msg


def test_waterbirds_bad_columns_and_values(tmp_path):
    _write(tmp_path / "metadata.csv", "img_id,img_filename,y,split\n1,a.jpg,1,0\n")
    with pytest.raises(ValueError, match=r"^place: column missing"):
        load_waterbirds(tmp_path)
    _write(tmp_path / "metadata.csv",
           "img_id,img_filename,y,split,place\n1,a.jpg,1,0,0\n2,b.jpg,2,0,0\n")
    with pytest.raises(ValueError, match=r"^y: data row 1 .* holds 2"):
        load_waterbirds(tmp_path)
    _write(tmp_path / "metadata.csv", "img_id,img_filename,y,split,place\n1,a.jpg,1,3,0\n")
    with pytest.raises(ValueError, match=r"^split: data row 0"):
        load_waterbirds(tmp_path)


def test_to_embedding_set(waterbirds_root):
    tr = load_waterbirds(waterbirds_root, split="train")
    feats = np.arange(5 * 3, dtype=np.float32).reshape(5, 3)
    es = to_embedding_set(tr, feats)
    assert isinstance(es, EmbeddingSet)
    assert (es.name, es.split, es.n_classes, es.n_groups) == ("waterbirds", "train", 2, 4)
    assert es.labels.tolist() == [1, 1, 1, 0, 0]
    assert es.group_counts().tolist() == [2, 0, 1, 2]
    assert es.features is feats
    # whole-file features cut down with indices
    full = torch.randn(10, 4)
    es2 = to_embedding_set(tr, full[torch.from_numpy(tr.indices)])
    assert torch.equal(es2.features, full[[0, 1, 2, 4, 5]])
    with pytest.raises(ValueError, match=r"features: 10 rows but split waterbirds/train has 5"):
        to_embedding_set(tr, full)


# -- CelebA -------------------------------------------------------------------------------

CELEBA_ATTRS = ("5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips "
                "Big_Nose Black_Hair Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin "
                "Eyeglasses Goatee Gray_Hair Heavy_Makeup High_Cheekbones Male Mouth_Slightly_Open "
                "Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose Receding_Hairline "
                "Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat "
                "Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young").split()
BLOND, MALE = CELEBA_ATTRS.index("Blond_Hair"), CELEBA_ATTRS.index("Male")

# (filename, blond, male, partition)
CELEBA_ROWS = [
    ("000001.jpg", 0, 0, 0),
    ("000002.jpg", 0, 0, 0),
    ("000003.jpg", 0, 1, 0),
    ("000004.jpg", 1, 0, 0),
    ("000005.jpg", 1, 1, 0),
    ("000006.jpg", 1, 0, 1),
    ("000007.jpg", 0, 1, 1),
    ("000008.jpg", 1, 1, 2),
    ("000009.jpg", 0, 0, 2),
]


def _celeba_attr_text(rows, count=None, names=CELEBA_ATTRS):
    lines = [str(len(rows) if count is None else count), " ".join(names) + " "]
    for k, (fn, blond, male, _) in enumerate(rows):
        vals = [1 if (j + k + 1) % 3 == 0 else -1 for j in range(len(names))]
        if BLOND < len(vals):
            vals[BLOND] = 1 if blond else -1
        if MALE < len(vals):
            vals[MALE] = 1 if male else -1
        lines.append(fn + " " + " ".join("%2d" % v for v in vals))
    return "\n".join(lines) + "\n"


def _celeba_part_text(rows):
    return "".join(f"{fn} {p}\n" for fn, _, _, p in rows)


@pytest.fixture
def celeba_root(tmp_path):
    _write(tmp_path / "list_attr_celeba.txt", _celeba_attr_text(CELEBA_ROWS))
    _write(tmp_path / "list_eval_partition.txt", _celeba_part_text(CELEBA_ROWS))
    return tmp_path


def test_celeba_format_fixture_is_published_layout(celeba_root):
    lines = (celeba_root / "list_attr_celeba.txt").read_text().splitlines()
    assert lines[0] == "9" and len(lines[1].split()) == 40
    assert lines[2].startswith("000001.jpg -1 -1  1 ")
    assert "  1" in lines[2]  # positive values are space-padded as in the released file


def test_celeba_splits_labels_groups(celeba_root):
    d = load_celeba(celeba_root)
    tr, va, te = d["train"], d["val"], d["test"]
    assert (len(tr), len(va), len(te)) == (5, 2, 2)
    assert tr.labels.tolist() == [0, 0, 0, 1, 1]
    assert tr.attributes.tolist() == [0, 0, 1, 0, 1]
    assert tr.groups.tolist() == [0, 0, 1, 2, 3]
    assert tr.group_counts().tolist() == [2, 1, 1, 1]
    assert va.groups.tolist() == [2, 1]
    assert te.groups.tolist() == [3, 0]
    assert te.indices.tolist() == [7, 8]
    assert va.paths_or_texts[0] == os.path.join(str(celeba_root), "img_align_celeba", "000006.jpg")
    assert tr.group_names == ("not_blond_female", "not_blond_male", "blond_female", "blond_male")


def test_celeba_official_subdirs_and_crlf(tmp_path):
    (tmp_path / "Anno").mkdir()
    (tmp_path / "Eval").mkdir()
    _write(tmp_path / "Anno" / "list_attr_celeba.txt",
           _celeba_attr_text(CELEBA_ROWS).replace("\n", "\r\n"))
    _write(tmp_path / "Eval" / "list_eval_partition.txt", _celeba_part_text(CELEBA_ROWS))
    te = load_celeba(tmp_path, split="test")
    assert te.labels.tolist() == [1, 0] and te.groups.tolist() == [3, 0]


def test_celeba_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        load_celeba(tmp_path)
    assert os.path.join(str(tmp_path), "list_attr_celeba.txt") in str(e.value)
    assert "CelebA" in str(e.value)
    _write(tmp_path / "list_attr_celeba.txt", _celeba_attr_text(CELEBA_ROWS))
    with pytest.raises(FileNotFoundError) as e:
        load_celeba(tmp_path)
    assert os.path.join(str(tmp_path), "list_eval_partition.txt") in str(e.value)


def test_celeba_bad_contents(tmp_path):
    _write(tmp_path / "list_eval_partition.txt", _celeba_part_text(CELEBA_ROWS))
    names = [n for n in CELEBA_ATTRS if n != "Male"]
    _write(tmp_path / "list_attr_celeba.txt", f"1\n{' '.join(names)}\n000001.jpg" + " -1" * 39 + "\n")
    with pytest.raises(ValueError, match=r"^Male: attribute missing"):
        load_celeba(tmp_path)
    _write(tmp_path / "list_attr_celeba.txt", _celeba_attr_text(CELEBA_ROWS, count=10))
    with pytest.raises(ValueError, match="header says 10 images but the file lists 9"):
        load_celeba(tmp_path)
    bad = _celeba_attr_text(CELEBA_ROWS).splitlines()
    parts = bad[3].split()
    parts[1 + BLOND] = "0"
    bad[3] = " ".join(parts)
    _write(tmp_path / "list_attr_celeba.txt", "\n".join(bad) + "\n")
    with pytest.raises(ValueError, match=r"^Blond_Hair: data row 1 \(000002.jpg\)"):
        load_celeba(tmp_path)
    _write(tmp_path / "list_attr_celeba.txt", _celeba_attr_text(CELEBA_ROWS))
    _write(tmp_path / "list_eval_partition.txt", _celeba_part_text(CELEBA_ROWS[:-1]))
    with pytest.raises(ValueError, match="no split listed for 000009.jpg"):
        load_celeba(tmp_path)


# -- MultiNLI -----------------------------------------------------------------------------

MULTINLI_CSV = """\
,gold_label,sentence2_has_negation,split
0,0,0,0
1,0,1,0
2,1,0,0
3,2,1,0
4,2,0,1
5,1,1,1
6,0,1,2
7,2,1,2
"""


def test_multinli_groups(tmp_path):
    _write(tmp_path / "metadata_random.csv", MULTINLI_CSV)
    d = load_multinli(tmp_path)
    tr, va, te = d["train"], d["val"], d["test"]
    assert tr.labels.tolist() == [0, 0, 1, 2]
    assert tr.groups.tolist() == [0, 1, 2, 5]
    assert tr.group_counts().tolist() == [1, 1, 1, 0, 0, 1]
    assert va.groups.tolist() == [4, 3]
    assert te.groups.tolist() == [1, 5]
    assert te.paths_or_texts == ["6", "7"]
    assert (tr.n_classes, tr.n_groups) == (3, 6)
    assert tr.class_names == ("contradiction", "entailment", "neutral")
    assert tr.group_names[5] == "neutral_negation"
    es = to_embedding_set(va, np.zeros((2, 8), np.float32))
    assert es.n_groups == 6 and es.group_counts().tolist() == [0, 0, 0, 1, 1, 0]


def test_multinli_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="metadata_random.csv"):
        load_multinli(tmp_path)
    _write(tmp_path / "metadata_random.csv", ",gold_label,split\n0,1,0\n")
    with pytest.raises(ValueError, match=r"^sentence2_has_negation: column missing"):
        load_multinli(tmp_path)
    _write(tmp_path / "metadata_random.csv", ",gold_label,sentence2_has_negation,split\n0,3,0,0\n")
    with pytest.raises(ValueError, match=r"^gold_label: data row 0 .* holds 3"):
        load_multinli(tmp_path)


# -- CivilComments ------------------------------------------------------------------------

CIVIL_HEADER = (",id,comment_text,split,created_date,toxicity,severe_toxicity,male,female,LGBTQ,"
                "christian,muslim,other_religions,black,white,identity_any")
CIVIL_CSV = CIVIL_HEADER + """
0,239612,"Thank you!! This would make my life a lot less anxiety-inducing.",train,2015-09-29,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0
1,239613,"He is a good man, a ""real"" christian.",train,2015-09-29,0.1,0.0,0.6,0.0,0.0,0.9,0.0,0.0,0.0,0.0,1
2,239614,"Idiots, all of them.",train,2015-09-29,0.8,0.1,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0
3,239615,"line one
line two, with a comma",train,2015-09-29,0.5,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.5,1
4,239616,"",val,2015-09-30,0.0,0.0,0.4,0.49,0.0,0.0,0.0,0.0,0.0,0.0,0
5,239617,"You people are awful.",val,2015-09-30,0.7,0.2,,,,,,,0.8,,1
6,239618,"Interesting article.",test,2015-10-01,0.49,0.0,0.0,0.0,0.5,0.0,0.0,0.0,0.0,0.0,1
"""


def test_civilcomments_groups(tmp_path):
    _write(tmp_path / "all_data_with_identities.csv", CIVIL_CSV)
    d = load_civilcomments(tmp_path)
    tr, va, te = d["train"], d["val"], d["test"]
    assert tr.labels.tolist() == [0, 0, 1, 1]          # toxicity >= 0.5 (0.5 counts)
    assert tr.attributes.tolist() == [0, 1, 0, 1]      # male/christian, none, white 0.5
    assert tr.groups.tolist() == [0, 1, 2, 3]
    assert va.groups.tolist() == [0, 3]                # 0.4/0.49 below threshold; black 0.8
    assert te.groups.tolist() == [1]                   # toxicity 0.49 -> 0, LGBTQ 0.5 -> 1
    assert tr.paths_or_texts[1] == 'He is a good man, a "real" christian.'
    assert tr.paths_or_texts[3] == "line one\nline two, with a comma"
    assert va.paths_or_texts[0] == ""
    assert va.indices.tolist() == [4, 5]
    assert tr.group_names == ("non_toxic_no_identity", "non_toxic_identity",
                              "toxic_no_identity", "toxic_identity")


def test_civilcomments_errors(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        load_civilcomments(tmp_path)
    assert os.path.join(str(tmp_path), "all_data_with_identities.csv") in str(e.value)
    assert "CivilComments" in str(e.value)
    no_lgbtq = CIVIL_HEADER.replace("LGBTQ,", "") + "\n"
    _write(tmp_path / "all_data_with_identities.csv", no_lgbtq)
    with pytest.raises(ValueError, match=r"^LGBTQ: column missing"):
        load_civilcomments(tmp_path)
    _write(tmp_path / "all_data_with_identities.csv",
           CIVIL_HEADER + "\n0,1,hi,extra,2015,0.1,0,0,0,0,0,0,0,0,0,0\n")
    with pytest.raises(ValueError, match=r"^split: data row 0 .* holds 'extra'"):
        load_civilcomments(tmp_path)
    _write(tmp_path / "all_data_with_identities.csv",
           CIVIL_HEADER + "\n0,1,hi,train,2015,,0,0,0,0,0,0,0,0,0,0\n")
    with pytest.raises(ValueError, match=r"^toxicity: data row 0 .* missing"):
        load_civilcomments(tmp_path)
    _write(tmp_path / "all_data_with_identities.csv",
           CIVIL_HEADER + "\n0,1,hi,train,2015,0.2,0,0,0,0,0,yes,0,0,0,0\n")
    with pytest.raises(ValueError, match=r"^muslim: data row 0 .* expected a number"):
        load_civilcomments(tmp_path)
