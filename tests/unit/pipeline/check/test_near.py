"""Unit tests of the near-duplicate re-check (pipeline.check.near): candidate pairs from equal
bands, edited copies found in English and Chinese, and a seed independent of the build's."""

from __future__ import annotations

import numpy as np

from pipeline.check.rules import RulesConfig
from schemas.verify.results import FAIL, PASS

GOOD_ZH = "这本书的内容非常丰富，作者从历史、文化和经济三个角度分析了城市的发展过程。读完以后让我对身边的街道有了全新的认识！"


ZH_REVIEWS = [
    "物流速度很快，包装也很结实，打开以后发现商品和描述完全一致，客服的态度也非常好，下次还会继续在这家店购买。",
    "酒店的位置很方便，离地铁站只有五分钟的路程，房间虽然不大但是干净整洁，早餐的种类也比较多，总体来说性价比很高。",
    "这部电影的节奏有些拖沓，前半部分铺垫太长，但是演员的表演很有感染力，结尾的反转也出乎意料，值得一看。",
    "手机用了一个星期，电池续航比想象中好，拍照效果在白天很清晰，晚上稍微有些噪点，系统运行流畅没有卡顿。",
    "餐厅的环境安静优雅，服务员上菜及时，招牌鱼做得鲜嫩入味，只是甜点偏甜了一些，价格在这个地段算是合理。",
]


# ------------------------------------------------------------------------------ near duplicates
def _prose(count: int) -> list[str]:
    import re
    from pydoc_data.topics import topics

    out = []
    for key in sorted(topics):
        for para in re.split(r"\n\s*\n", topics[key]):
            text = " ".join(line.strip() for line in para.strip().split("\n"))
            if len(text.split()) >= 60 and not para.startswith((" ", ">>>")) and text not in out:
                out.append(text)
    return out[:count]



def test_candidate_pairs_from_equal_bands():
    from pipeline.check.near import candidate_pairs

    q = np.array([[1, 2], [3, 4], [1, 9], [7, 4]], dtype=np.uint64)
    assert candidate_pairs(q).tolist() == [[0, 2], [1, 3]]
    index = np.array([[5, 5], [3, 8], [0, 9]], dtype=np.uint64)
    assert candidate_pairs(q, index).tolist() == [[1, 1], [2, 2]]


def test_near_overlap_recheck_finds_edited_copies_in_english_and_chinese():
    from types import SimpleNamespace

    from pipeline.check.near import NearChecker, _overlap
    from pipeline.check.text import TextSample

    english = _prose(40)
    chinese = [GOOD_ZH, *ZH_REVIEWS]
    train = english[:30] + chinese[:4]
    edited = []
    for text in english[:5]:
        words = text.split()
        words[len(words) // 3] = "zebra"
        edited.append(" ".join(words))
    edited.append(chinese[0].replace("历史", "历代", 1))  # one character edited
    ev = edited + english[30:] + chinese[4:]
    manifest = SimpleNamespace(dedup={"seed": 1, "shingles": {"word_ngram": 5, "char_ngram": 5}}, config={})
    checker = NearChecker(manifest, RulesConfig(), seed=0)
    for a, b in zip(english[:5] + [chinese[0]], edited):
        assert checker.jaccard(a, b) >= 0.8
    refs = lambda split, n: [(f"{split}/x.arrow", i) for i in range(n)]  # noqa: E731
    result = _overlap(checker, TextSample("train", refs("train", len(train)), train, len(train)), TextSample("eval", refs("eval", len(ev)), ev, len(ev)))
    assert result.status == FAIL and result.value == 6 and result.row == 0
    clean = _overlap(checker, TextSample("train", refs("train", 25), english[5:30], 25), TextSample("eval", refs("eval", len(ev)), ev, len(ev)))
    assert clean.status == PASS and clean.value == 0


def test_near_checker_never_uses_the_build_seed():
    from types import SimpleNamespace

    from pipeline.check.near import CHECK_SEED_OFFSET, NearChecker

    manifest = SimpleNamespace(dedup={"seed": CHECK_SEED_OFFSET}, config={})
    assert NearChecker(manifest, RulesConfig(), seed=0).hasher.seed != CHECK_SEED_OFFSET

