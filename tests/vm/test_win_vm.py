"""MPI windows across guests and the host, joined only by the ivshmem region:
two guests share an Allocate_shared window and each sees the other's
stores; a host rank and a guest Lock/Put/Unlock into each other's Allocate
windows and count with Fetch_and_op (guest_win.py checks every value)."""
from test_comm_vm import assert_all_ok, run_ranks
from vmhelpers import guest_script

SCRIPT = guest_script("guest_win.py")


def test_two_guests_share_a_window(vm_ready, shm_path):
    assert_all_ok(*run_ranks(shm_path, ["guest", "guest"], 0, script=SCRIPT))


def test_host_rank_and_guest_rank_use_each_others_windows(vm_ready, shm_path):
    assert_all_ok(*run_ranks(shm_path, ["host", "guest"], 0, script=SCRIPT))
