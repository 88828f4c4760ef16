package launch

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmsnap/vmsnap"
)

// A socket that a live process still serves is not stale: Start refuses
// and leaves it (the old QEMU would lose its monitor for good, and a
// second QEMU would open the same images).
func TestStartLeavesALiveSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "qmp.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	e := &Exec{Argv: []string{"/bin/false", "-qmp", "unix:" + sock + ",server=on,wait=off"}, Socket: sock}
	_, err = e.Start(testCtx(t), vmsnap.LaunchSpec{})
	if !errors.Is(err, ErrLaunch) || !strings.Contains(err.Error(), "still serves") {
		t.Fatalf("Start next to a live socket: %v", err)
	}
	if _, serr := os.Lstat(sock); serr != nil {
		t.Fatalf("live socket %s was removed: %v", sock, serr)
	}
	if e.Process() != nil {
		t.Fatal("a process was started")
	}
}

// A command line that never serves QMP on the socket makes Start give up
// after StartTimeout and kill what it started.
func TestStartTimeout(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "qmp.sock")
	e := &Exec{Argv: []string{"/bin/sleep", "30", "unix:" + sock}, Socket: sock, StartTimeout: 300 * time.Millisecond}
	start := time.Now()
	_, err := e.Start(testCtx(t), vmsnap.LaunchSpec{})
	if !errors.Is(err, ErrLaunch) || time.Since(start) > 5*time.Second {
		t.Fatalf("Start: %v after %v", err, time.Since(start))
	}
	if p := e.Process(); p == nil || !processGone(p.Pid) {
		t.Fatal("the process Start gave up on still runs")
	}
}
