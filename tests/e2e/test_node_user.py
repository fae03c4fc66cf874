"""The node connection logs in as the login node's account, whatever the ssh config says for
node names. The test cluster's ssh config reaches node1/node2 as hpcuser by default; hpcuser2's
profile (tc-login-2) must still reach its own lab's socket as hpcuser2, also when hpcuser has a
job on that node (so that pam_slurm_adopt would let hpcuser in: found by bench/scale.py, where
the lab of hpcuser2 did not answer through a forward made as hpcuser)."""

from __future__ import annotations

from lab import Hpclab, accepted, hpclab, profile_text, tc, user_jobs

__all__ = ["hpclab"]


def test_node_connection_is_made_as_the_login_account(hpclab: Hpclab, cluster) -> None:  # type: ignore[no-untyped-def]
    user, user2 = tc("TC_USER"), tc("TC_USER2")
    node = cluster.nodes[0]
    hpclab.write_config(profile_text("testcluster-2", transport="socket", extra_directives=[f"--nodelist={node}"]))
    with cluster.job_on(user, node):  # hpcuser could log in to the node now
        as_user = accepted(node, user)
        info = hpclab.json("up", "testcluster-2", "--detach", "--no-browser")
        assert info["node"] == node and info["transport"] == "socket"
        assert accepted(node, user) == as_user  # hpclab never logged in to the node as hpcuser
        assert hpclab.json("stop", info["id"])[0]["id"] == info["id"]
    assert user_jobs(user2) == []
