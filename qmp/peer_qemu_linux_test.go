package qmp_test

import (
	"testing"

	"github.com/vmsnap/vmsnap/internal/qemutest"
	"github.com/vmsnap/vmsnap/qmp"
)

// wrapped is a Monitor that wraps another and says so.
type wrapped struct{ qmp.Monitor }

func (w wrapped) UnwrapMonitor() qmp.Monitor { return w.Monitor }

// PeerPID names the QEMU process at the other end of a unix socket, also
// through a Shared view and a wrapper; a go-qemu monitor does not tell.
func TestPeerPIDIsQEMU(t *testing.T) {
	vm := qemutest.Start(t, qemutest.Options{})
	for name, m := range map[string]qmp.Monitor{"client": vm.Mon, "shared": vm.Mon.Share(), "wrapped": wrapped{vm.Mon.Share()}} {
		if pid, ok := qmp.PeerPID(m); !ok || pid != vm.Pid {
			t.Errorf("%s: PeerPID = %d, %v; want QEMU's pid %d", name, pid, ok, vm.Pid)
		}
	}
	if _, ok := qmp.PeerPID(qmp.FromGoQEMU(vm.Mon)); ok {
		t.Error("PeerPID of a go-qemu monitor reported a pid")
	}
}
