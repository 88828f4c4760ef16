package vmsnap_test

import (
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/vmsnap/vmsnap"
	"github.com/vmsnap/vmsnap/internal/qemutest"
	"github.com/vmsnap/vmsnap/launch"
	"github.com/vmsnap/vmsnap/qmp"
	"github.com/vmsnap/vmsnap/store"
)

// closeSpy is a caller's monitor that records whether anyone closed it.
type closeSpy struct {
	qmp.Monitor
	closed atomic.Bool
}

func (c *closeSpy) Close() error {
	c.closed.Store(true)
	return c.Monitor.Close()
}

// A relaunch never closes the monitor the caller gave Open; it reports the
// new one through Domain.Monitor and an EventRelaunched, after an
// EventGuestStopped that says the coming SHUTDOWN is vmsnap's.
func TestQEMURelaunchLeavesCallersMonitor(t *testing.T) {
	vm := qemutest.Start(t, qemutest.Options{})
	ctx := testCtx(t)
	fs, err := store.NewFileStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]string{}
	for _, d := range vm.Disks {
		files[d.Device] = d.File
	}
	logf, err := os.Create(filepath.Join(t.TempDir(), "relaunched.log"))
	if err != nil {
		t.Fatal(err)
	}
	ex := &launch.Exec{Argv: vm.Argv, Socket: vm.Socket, DiskFiles: files, Pid: vm.Pid, Stdout: logf, Stderr: logf}
	t.Cleanup(func() { ex.Close(); logf.Close() })
	spy := &closeSpy{Monitor: vm.Mon}
	var mu sync.Mutex
	var events []vmsnap.Event
	dom, err := vmsnap.Open(ctx, spy, vmsnap.Options{Store: fs, Launcher: ex, Events: func(ev vmsnap.Event) {
		mu.Lock()
		events = append(events, ev)
		mu.Unlock()
	}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dom.Create(ctx, vmsnap.CreateSpec{Name: "d"}, vmsnap.External|vmsnap.DiskOnly).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := dom.Revert(ctx, "d", vmsnap.RevertForce).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if spy.closed.Load() {
		t.Error("the relaunch closed the caller's monitor")
	}
	now := dom.Monitor()
	if now == nil || now == qmp.Monitor(spy) {
		t.Fatalf("Domain.Monitor after the relaunch = %v, want the new QEMU's", now)
	}
	mu.Lock()
	defer mu.Unlock()
	stopped, relaunched := -1, -1
	for i, ev := range events {
		switch {
		case ev.Kind == vmsnap.EventGuestStopped && ev.Op == "revert" && stopped < 0:
			stopped = i
		case ev.Kind == vmsnap.EventRelaunched && ev.Op == "revert":
			relaunched = i
			if ev.Monitor != now {
				t.Errorf("EventRelaunched carries %v, Domain.Monitor is %v", ev.Monitor, now)
			}
		}
	}
	if stopped < 0 || relaunched < 0 || stopped > relaunched {
		t.Errorf("events %+v: want guest-stopped, then relaunched", events)
	}
	if _, err := qmp.QueryStatus(ctx, now); err != nil {
		t.Errorf("the new monitor does not answer: %v", err)
	}
}
