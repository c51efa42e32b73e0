"""An independent re-implementation of docs/protocol.md, written the way the reference notebook is.

It uses the legacy global ``np.random`` stream, pandas ``groupby`` over users, and per-user loops,
i.e. a different code path from ``evcf.data.split`` (vectorised, RandomState instance, sorted
blocks).  Tests compare the two; never import evcf here.
"""

import numpy as np
import pandas as pd


def reference_split(raw: pd.DataFrame, n_heldout: int, threshold: float = 3.5, min_uc: int = 5):
    """``raw`` has columns user, item, rating in file order.  Returns dict of frames + id lists."""
    data = raw[raw["rating"] > threshold]
    user_count = data[["user"]].groupby("user", as_index=True).size()
    data = data[data["user"].isin(user_count.index[user_count >= min_uc])]

    user_activity = data[["user"]].groupby("user", as_index=True).size()
    unique_uid = user_activity.index
    np.random.seed(98765)
    unique_uid = unique_uid[np.random.permutation(unique_uid.size)]
    n = unique_uid.size
    tr_users = unique_uid[: n - 2 * n_heldout]
    vd_users = unique_uid[n - 2 * n_heldout : n - n_heldout]
    te_users = unique_uid[n - n_heldout :]

    train_plays = data.loc[data["user"].isin(tr_users)]
    unique_sid = pd.unique(train_plays["item"])

    def proportion_split(plays):
        groups = plays.groupby("user")
        tr_list, te_list = [], []
        np.random.seed(98765)
        for _, group in groups:
            n_u = len(group)
            if n_u >= 5:
                idx = np.zeros(n_u, dtype="bool")
                idx[np.random.choice(n_u, size=int(0.2 * n_u), replace=False).astype("int64")] = True
                tr_list.append(group[np.logical_not(idx)])
                te_list.append(group[idx])
            else:
                tr_list.append(group)
        empty = plays.iloc[:0]
        return (pd.concat(tr_list) if tr_list else empty), (pd.concat(te_list) if te_list else empty)

    vad = data.loc[data["user"].isin(vd_users)]
    vad = vad.loc[vad["item"].isin(unique_sid)]
    vad_tr, vad_te = proportion_split(vad)
    test = data.loc[data["user"].isin(te_users)]
    test = test.loc[test["item"].isin(unique_sid)]
    test_tr, test_te = proportion_split(test)

    show2id = {sid: i for i, sid in enumerate(unique_sid)}
    profile2id = {uid: i for i, uid in enumerate(unique_uid)}

    def numerize(tp):
        return pd.DataFrame(
            {"uid": [profile2id[x] for x in tp["user"]], "sid": [show2id[x] for x in tp["item"]]},
            dtype="int64",
        )

    return {
        "train.csv": numerize(train_plays),
        "validation_tr.csv": numerize(vad_tr),
        "validation_te.csv": numerize(vad_te),
        "test_tr.csv": numerize(test_tr),
        "test_te.csv": numerize(test_te),
        "unique_sid": list(unique_sid),
        "unique_uid": list(unique_uid),
    }
