package enginetest

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmsnap/vmsnap"
	"github.com/vmsnap/vmsnap/hmp"
	"github.com/vmsnap/vmsnap/internal/qemutest"
	"github.com/vmsnap/vmsnap/launch"
	"github.com/vmsnap/vmsnap/qmp"
	"github.com/vmsnap/vmsnap/store"
)

// QEMUOptions configure the real QEMU targets NewQEMU starts.
type QEMUOptions struct {
	// HideSnapshotJobs makes QEMU look older than 6.0 to the engine: the
	// monitor it gets leaves snapshot-save, -load and -delete out of
	// query-commands and refuses them as QEMU 5.2 would, so the engine
	// must fall back to HMP savevm, loadvm and delvm. Monitors a Launcher
	// returns are wrapped the same way.
	HideSnapshotJobs bool
}

// NewQEMU returns a NewTarget that starts qemu-system-x86_64 with
// internal/qemutest's counter guest (64 MiB, TCG) and two qcow2 disks. It
// offers every Capability. Like qemutest.Start it skips the test when QEMU
// is missing, and fails it instead when CI=true.
func NewQEMU(opts QEMUOptions) NewTarget {
	return func(t *testing.T) Target {
		t.Helper()
		vm := qemutest.Start(t, qemutest.Options{})
		fs, err := store.NewFileStore(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		q := &qemuTarget{vm: vm, fs: fs, log: &commandLog{}, hide: opts.HideSnapshotJobs, raw: vm.Mon}
		ctx, cancel := context.WithTimeout(context.Background(), witnessTimeout)
		defer cancel()
		dom, err := vmsnap.Open(ctx, q.wrap(vm.Mon), vmsnap.Options{Store: fs, Config: q.config()})
		if err != nil {
			t.Fatal(err)
		}
		if dom.UUID() != vm.UUID {
			t.Fatalf("enginetest: domain UUID %q, QEMU was started with %q", dom.UUID(), vm.UUID)
		}
		q.dom = dom
		return q
	}
}

// qemuTarget is a Target on a real QEMU process.
var (
	_ Relauncher    = (*qemuTarget)(nil)
	_ OfflineTarget = (*qemuTarget)(nil)
	_ ImageTarget   = (*qemuTarget)(nil)
)

type qemuTarget struct {
	vm   *qemutest.VM
	fs   *store.FileStore
	dom  *vmsnap.Domain
	log  *commandLog
	hide bool

	mu         sync.Mutex
	raw        qmp.Monitor // the monitor of the QEMU that runs now, unwrapped
	relaunched bool
	offline    bool
	launched   *vmsnap.Domain
}

func (q *qemuTarget) wrap(m qmp.Monitor) qmp.Monitor {
	return &monitor{Monitor: m, log: q.log, hideJobs: q.hide}
}

func (q *qemuTarget) config() []byte { return []byte(strings.Join(q.vm.Argv, "\x00")) }

// mon returns the monitor of the QEMU that runs now; it fails the test
// when the domain was shut off.
func (q *qemuTarget) mon(t testing.TB) qmp.Monitor {
	t.Helper()
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.offline {
		t.Fatal("enginetest: QEMU was shut down (Offline)")
	}
	return q.raw
}

func (q *qemuTarget) isOffline() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.offline
}

func (q *qemuTarget) Domain() *vmsnap.Domain { return q.dom }
func (q *qemuTarget) Store() store.Store     { return q.fs }
func (q *qemuTarget) SnapshotJobs() bool     { return !q.hide }

func (q *qemuTarget) Disks() []Disk {
	var out []Disk
	for _, d := range q.vm.Disks {
		out = append(out, Disk{Device: d.Device, Node: d.Node})
	}
	return out
}

// base returns the base image file of d.
func (q *qemuTarget) base(t testing.TB, d Disk) string {
	t.Helper()
	for _, vd := range q.vm.Disks {
		if vd.Device == d.Device {
			return vd.File
		}
	}
	t.Fatalf("enginetest: no disk %s", d.Device)
	return ""
}

// Tags lists the base image's snapshots with `qemu-img snapshot -l -U`.
func (q *qemuTarget) Tags(t testing.TB, d Disk) []string {
	t.Helper()
	return qemutest.ImgSnapshots(t, q.base(t, d))
}

// Counter reads the guest's counter with HMP xp.
func (q *qemuTarget) Counter(t testing.TB) uint64 {
	t.Helper()
	return counterXP(t, q.mon(t))
}

func (q *qemuTarget) Running(t testing.TB) bool {
	t.Helper()
	if q.isOffline() {
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), witnessTimeout)
	defer cancel()
	st, err := qmp.QueryStatus(ctx, q.mon(t))
	if err != nil {
		t.Fatal(err)
	}
	return st.Running
}

func (q *qemuTarget) Pause(t testing.TB)  { t.Helper(); execute(t, q.mon(t), "stop", nil) }
func (q *qemuTarget) Resume(t testing.TB) { t.Helper(); execute(t, q.mon(t), "cont", nil) }

// Write writes 4 KiB of pattern at offset 0 of d through HMP qemu-io in
// the running QEMU, and flushes it.
func (q *qemuTarget) Write(t testing.TB, d Disk, pattern byte) {
	t.Helper()
	q.qemuIO(t, d, fmt.Sprintf("write -P %#x 0 4096", pattern))
	q.qemuIO(t, d, "flush")
}

func (q *qemuTarget) qemuIO(t testing.TB, d Disk, cmd string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), witnessTimeout)
	defer cancel()
	if out, err := hmp.Run(ctx, q.mon(t), "qemu-io -d "+d.Device+` "`+cmd+`"`); err != nil || strings.TrimSpace(out) != "" {
		t.Fatalf("enginetest: qemu-io -d %s %q: %q %v", d.Device, cmd, out, err)
	}
}

// Holds flushes d in QEMU and reads the first 4 KiB of its top image with
// qemu-io -r -U; offline it reads the base image.
func (q *qemuTarget) Holds(t testing.TB, d Disk, pattern byte) bool {
	t.Helper()
	if !q.isOffline() {
		q.qemuIO(t, d, "flush")
	}
	return qemutest.ReadPattern(t, q.top(t, d), 0, 4096, pattern)
}

// top returns the image file QEMU writes to for d (query-block), or the
// base file when QEMU is shut down.
func (q *qemuTarget) top(t testing.TB, d Disk) string {
	t.Helper()
	if q.isOffline() {
		return q.base(t, d)
	}
	var blocks []struct {
		QDev     string `json:"qdev"`
		Inserted *struct {
			File string `json:"file"`
		} `json:"inserted"`
	}
	ctx, cancel := context.WithTimeout(context.Background(), witnessTimeout)
	defer cancel()
	if err := q.mon(t).Execute(ctx, "query-block", nil, &blocks); err != nil {
		t.Fatal(err)
	}
	for _, b := range blocks {
		parts := strings.Split(strings.Trim(b.QDev, "/"), "/")
		if b.Inserted != nil && slices.Contains(parts, d.Device) {
			return b.Inserted.File
		}
	}
	t.Fatalf("enginetest: query-block lists no image for %s: %+v", d.Device, blocks)
	return ""
}

func (q *qemuTarget) Sent(t testing.TB) []string { return q.log.list() }

func (q *qemuTarget) SnapshotBehind(t testing.TB, d Disk, name string) {
	t.Helper()
	execute(t, q.mon(t), "blockdev-snapshot-internal-sync", map[string]any{"device": d.Node, "name": name})
}

func (q *qemuTarget) DeleteBehind(t testing.TB, d Disk, name string) {
	t.Helper()
	execute(t, q.mon(t), "blockdev-snapshot-delete-internal-sync", map[string]any{"device": d.Node, "name": name})
}

// WithLauncher binds a Domain with a launch.Exec that restarts QEMU from
// the rig's command line; relaunched processes end at cleanup.
func (q *qemuTarget) WithLauncher(t testing.TB) *vmsnap.Domain {
	t.Helper()
	q.mu.Lock()
	if q.launched != nil {
		defer q.mu.Unlock()
		return q.launched
	}
	raw := q.raw
	q.mu.Unlock()
	out, err := os.Create(filepath.Join(t.TempDir(), "relaunched.log"))
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]string{}
	for _, d := range q.vm.Disks {
		files[d.Device] = d.File
	}
	ex := &launch.Exec{Argv: q.vm.Argv, Socket: q.vm.Socket, DiskFiles: files, Pid: q.vm.Pid, Stdout: out, Stderr: out}
	t.Cleanup(func() {
		ex.Close()
		out.Close()
	})
	l := &launcher{inner: ex, wrap: q.wrap, started: func(m qmp.Monitor) {
		q.mu.Lock()
		q.raw, q.relaunched = m, true
		q.mu.Unlock()
	}}
	ctx, cancel := context.WithTimeout(context.Background(), witnessTimeout)
	defer cancel()
	dom, err := vmsnap.Open(ctx, q.wrap(raw), vmsnap.Options{Store: q.fs, Launcher: l, Config: q.config()})
	if err != nil {
		t.Fatal(err)
	}
	q.mu.Lock()
	q.launched = dom
	q.mu.Unlock()
	return dom
}

// Offline quits QEMU, waits for it to exit and binds the image files with
// vmsnap.OpenOffline.
func (q *qemuTarget) Offline(t testing.TB) *vmsnap.Domain {
	t.Helper()
	q.mu.Lock()
	relaunched := q.relaunched
	q.mu.Unlock()
	if relaunched {
		t.Fatal("enginetest: Offline after a relaunch is not supported")
	}
	execute(t, q.mon(t), "quit", nil)
	select {
	case <-q.vm.Exited():
	case <-time.After(witnessTimeout):
		t.Fatal("enginetest: QEMU did not quit")
	}
	q.mu.Lock()
	q.offline = true
	q.mu.Unlock()
	var disks []vmsnap.OfflineDisk
	for _, d := range q.vm.Disks {
		disks = append(disks, vmsnap.OfflineDisk{Device: d.Device, File: d.File})
	}
	ctx, cancel := context.WithTimeout(context.Background(), witnessTimeout)
	defer cancel()
	dom, err := vmsnap.OpenOffline(ctx, q.dom.UUID(), vmsnap.Options{Store: q.fs, Disks: disks})
	if err != nil {
		t.Fatal(err)
	}
	return dom
}

// Chain reads the backing chain of d's top image with qemu-img info
// --backing-chain.
func (q *qemuTarget) Chain(t testing.TB, d Disk) []string {
	t.Helper()
	return imageChain(t, q.top(t, d))
}

func imageChain(t testing.TB, top string) []string {
	t.Helper()
	var infos []struct {
		Filename string `json:"filename"`
	}
	out := qemutest.Img(t, "info", "-U", "--backing-chain", "--output=json", top)
	if err := json.Unmarshal([]byte(out), &infos); err != nil {
		t.Fatalf("enginetest: qemu-img info %s: %v\n%s", top, err, out)
	}
	var files []string
	for _, i := range infos {
		files = append(files, i.Filename)
	}
	return files
}

// CheckImages runs qemu-img check -U on every image of every disk's chain.
func (q *qemuTarget) CheckImages(t testing.TB) {
	t.Helper()
	for _, d := range q.Disks() {
		for _, f := range q.Chain(t, d) {
			qemutest.Img(t, "check", "-q", "-U", f)
		}
	}
}

// counterXP reads the guest's 64-bit counter at qemutest.CounterAddr with
// HMP xp.
func counterXP(t testing.TB, mon qmp.Monitor) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), witnessTimeout)
	defer cancel()
	out, err := hmp.Run(ctx, mon, fmt.Sprintf("xp /1gx %#x", qemutest.CounterAddr))
	if err != nil {
		t.Fatal(err)
	}
	var addr, v uint64
	if _, err := fmt.Sscanf(strings.TrimSpace(out), "%x: 0x%x", &addr, &v); err != nil {
		t.Fatalf("enginetest: xp printed %q: %v", out, err)
	}
	return v
}

// execute runs a QMP command on mon and fails the test when it fails.
func execute(t testing.TB, mon qmp.Monitor, cmd string, args any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), witnessTimeout)
	defer cancel()
	if err := mon.Execute(ctx, cmd, args, nil); err != nil {
		t.Fatalf("enginetest: %s: %v", cmd, err)
	}
}
