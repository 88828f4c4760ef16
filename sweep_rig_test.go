package vmsnap_test

// The rig of the kill-point and cancel sweeps (sweep_test.go): a guest per
// point, a second QMP monitor the test watches QEMU through, a helper
// process that runs the operation and is killed, the restart of QEMU a
// toolstack would do, and the checks every settled point must pass.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	osexec "os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vmsnap/vmsnap"
	"github.com/vmsnap/vmsnap/hmp"
	"github.com/vmsnap/vmsnap/internal/migrate"
	"github.com/vmsnap/vmsnap/internal/qemutest"
	"github.com/vmsnap/vmsnap/launch"
	"github.com/vmsnap/vmsnap/qmp"
	"github.com/vmsnap/vmsnap/store"
)

// sweepPattern is data written with qemu-io before the operation: length
// bytes of want at off of the disk dev. A revert may leave alt instead
// (the data written after the snapshot), when it rolled back.
type sweepPattern struct {
	dev       string
	off, size int64
	want, alt byte
}

// sweepEnv is one point's guest: a QEMU started by the rig with a second
// monitor on watchSock, its store, and the data written before the
// operation.
type sweepEnv struct {
	t         *testing.T
	vm        *qemutest.VM
	watchSock string
	fs        *store.FileStore
	storeDir  string
	uuid      string
	log       string            // every QEMU of the point writes its output here
	files     map[string]string // device -> the disk's own image
	pats      []sweepPattern
	dom       *vmsnap.Domain // bound in this process on the rig's monitor
	exec      *launch.Exec   // its Launcher
}

// newSweepEnv starts a guest: with blob loaded at 16 MiB when blob is not
// empty (RAM twice the blob's size, at least 128 MiB), else a small idle
// one.
func newSweepEnv(t *testing.T, blob, storeDir string) *sweepEnv {
	t.Helper()
	wdir, err := os.MkdirTemp("", "vsw")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(wdir) })
	watch := filepath.Join(wdir, "w.sock")
	opts := qemutest.Options{MemoryMiB: 64, DiskSize: "128M", ExtraArgs: []string{"-qmp", "unix:" + watch + ",server=on,wait=off"}}
	if blob != "" {
		fi, err := os.Stat(blob)
		if err != nil {
			t.Fatal(err)
		}
		opts.MemoryMiB, opts.Loaders = max(128, int(2*fi.Size()>>20)), []qemutest.Loader{{File: blob, Addr: 0x1000000}}
	}
	vm := qemutest.Start(t, opts)
	// Every QEMU a point started, also through a killed helper process,
	// ends before the rig's cleanup (which would wait for a quit that a
	// closed monitor cannot send).
	t.Cleanup(func() { killSweepQEMUs(t, watch) })
	if storeDir == "" {
		storeDir = t.TempDir()
	}
	fs, err := store.NewFileStore(storeDir)
	if err != nil {
		t.Fatal(err)
	}
	e := &sweepEnv{t: t, vm: vm, watchSock: watch, fs: fs, storeDir: storeDir, uuid: vm.UUID,
		log: filepath.Join(vm.Dir, "qemu.log"), files: map[string]string{}}
	for _, d := range vm.Disks {
		e.files[d.Device] = d.File
	}
	e.exec = e.newExec(vm.Pid)
	e.dom, err = vmsnap.Open(testCtx(t), vm.Mon, vmsnap.Options{Store: fs, Launcher: e.exec})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// newExec returns a Launcher for the guest's command line whose QEMUs
// write to the point's log; pid is the QEMU that runs now (0: none).
func (e *sweepEnv) newExec(pid int) *launch.Exec {
	logf, err := os.OpenFile(e.log, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		e.t.Fatal(err)
	}
	ex := &launch.Exec{Argv: e.vm.Argv, Socket: e.vm.Socket, DiskFiles: e.files, Pid: pid, Stdout: logf, Stderr: logf}
	e.t.Cleanup(func() {
		ex.Close()
		logf.Close()
	})
	return ex
}

// write writes a pattern through the rig's QEMU and remembers it.
func (e *sweepEnv) write(p sweepPattern) {
	e.t.Helper()
	ctx := testCtx(e.t)
	b := p.want
	if p.alt != 0 {
		b = p.alt
	}
	for _, c := range []string{fmt.Sprintf("write -P %#x %d %d", b, p.off, p.size), "flush"} {
		if out, err := e.vm.QemuIO(ctx, p.dev, c); err != nil || strings.Contains(out, "failed") {
			e.t.Fatalf("qemu-io %s %q: %v %s", p.dev, c, err, out)
		}
	}
	for i, q := range e.pats {
		if q.dev == p.dev && q.off == p.off {
			if p.alt != 0 {
				p.want = q.want
			}
			e.pats[i] = p
			return
		}
	}
	e.pats = append(e.pats, p)
}

// stage writes 4 KiB at offset stage*64 KiB of every disk, a byte per
// stage and disk.
func (e *sweepEnv) stage(n int) {
	for i, d := range e.vm.Disks {
		e.write(sweepPattern{dev: d.Device, off: int64(n) << 16, size: 4096, want: byte(0x10*(n+1) + i + 1)})
	}
}

// overwrite writes new data over stage n's patterns: a revert that
// happened shows stage n's data again, one rolled back shows this.
func (e *sweepEnv) overwrite(n int) {
	for i, d := range e.vm.Disks {
		e.write(sweepPattern{dev: d.Device, off: int64(n) << 16, size: 4096, alt: byte(0xe0 + i)})
	}
}

// bulk writes size bytes at 1 MiB of every disk, so a merge has work.
func (e *sweepEnv) bulk(size int64) {
	for i, d := range e.vm.Disks {
		e.write(sweepPattern{dev: d.Device, off: 1 << 20, size: size, want: byte(0xa0 + i)})
	}
}

func (e *sweepEnv) create(name string, flags vmsnap.CreateFlags) {
	e.t.Helper()
	ctx := testCtx(e.t)
	if _, err := e.dom.Create(ctx, vmsnap.CreateSpec{Name: name}, flags).Wait(ctx); err != nil {
		e.t.Fatalf("setup: create %s (%v): %v", name, flags, err)
	}
}

// sweepQEMUs returns the pids of the live QEMU processes serving sock
// (the rig's, the ones a Launcher started, also from a helper process).
func sweepQEMUs(sock string) []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, ent := range ents {
		pid, err := strconv.Atoi(ent.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", ent.Name(), "cmdline"))
		if err == nil && strings.Contains(string(b), "unix:"+sock+",") {
			pids = append(pids, pid)
		}
	}
	return pids
}

// killSweepQEMUs SIGKILLs the QEMUs serving sock and waits until they are
// gone.
func killSweepQEMUs(t *testing.T, sock string) {
	pids := sweepQEMUs(sock)
	for _, pid := range pids {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	for _, pid := range pids {
		waitExited(t, pid)
	}
}

// waitExited waits until process pid has exited: gone, or a zombie all
// of whose threads have ended (its files, the monitor sockets among them,
// are closed only then; the leader turns zombie before the threads that
// are still writing).
func waitExited(t *testing.T, pid int) {
	dir := filepath.Join("/proc", strconv.Itoa(pid))
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(2 * time.Millisecond) {
		b, err := os.ReadFile(filepath.Join(dir, "stat"))
		if err != nil {
			return
		}
		// pid (comm) S ...: the state follows the last ')'.
		i := strings.LastIndexByte(string(b), ')')
		zombie := i > 0 && i+2 < len(b) && (b[i+2] == 'Z' || b[i+2] == 'X')
		if tasks, err := os.ReadDir(filepath.Join(dir, "task")); zombie && (err != nil || len(tasks) <= 1) {
			return
		}
	}
	t.Fatalf("process %d did not exit after SIGKILL", pid)
}

// sweepEvent is something the watcher saw, keyed "name#n" for the nth
// time it was seen.
type sweepEvent struct {
	key string
	at  time.Duration
}

// sweepWatcher follows the guest's QEMUs through the second monitor: the
// events (job status changes, STOP, RESUME, SHUTDOWN), polled states (the
// migration's status, a relaunched QEMU leaving inmigrate: "loaded"), a
// relaunched QEMU's first answer ("new-qemu"), and the disks' top images.
// When the event named by trigger is seen, fire runs at once.
type sweepWatcher struct {
	sock    string
	start   time.Time
	trigger string
	fire    func()

	mu     sync.Mutex
	events []sweepEvent
	counts map[string]int
	chains map[string][]string
	fired  bool
	stop   chan struct{}
	done   chan struct{}
}

func watchSweep(sock, trigger string, fire func()) *sweepWatcher {
	w := &sweepWatcher{sock: sock, start: time.Now(), trigger: trigger, fire: fire,
		counts: map[string]int{}, chains: map[string][]string{}, stop: make(chan struct{}), done: make(chan struct{})}
	ready := make(chan struct{})
	go w.run(ready)
	<-ready
	return w
}

func (w *sweepWatcher) emit(name string) {
	w.mu.Lock()
	w.counts[name]++
	key := name + "#" + strconv.Itoa(w.counts[name])
	w.events = append(w.events, sweepEvent{key, time.Since(w.start)})
	fire := key == w.trigger && !w.fired
	if fire {
		w.fired = true
	}
	w.mu.Unlock()
	if fire {
		w.fire()
	}
}

func (w *sweepWatcher) stopped() bool {
	select {
	case <-w.stop:
		return true
	default:
		return false
	}
}

func (w *sweepWatcher) run(ready chan struct{}) {
	defer close(w.done)
	readyOnce := sync.OnceFunc(func() { close(ready) })
	defer readyOnce()
	connected := false
	for !w.stopped() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		mon, err := qmp.Dial(ctx, "unix:"+w.sock)
		cancel()
		if err != nil {
			readyOnce() // no QEMU answers yet: nothing to watch
			select {
			case <-w.stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			continue
		}
		if connected {
			w.emit("new-qemu")
		}
		connected = true
		w.follow(mon, readyOnce)
		mon.Close()
	}
}

// follow watches one QEMU until its monitor closes or the watcher stops.
// It polls once before it calls ready, so the disks' images are known
// before the operation starts.
func (w *sweepWatcher) follow(mon *qmp.Client, ready func()) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	evs, err := mon.Subscribe(ctx)
	if err != nil {
		ready()
		return
	}
	go func() {
		for ev := range evs {
			switch ev.Name {
			case "JOB_STATUS_CHANGE":
				var d struct {
					Status string `json:"status"`
				}
				ev.DecodeData(&d)
				w.emit("job-" + d.Status)
			case "STOP", "RESUME", "SHUTDOWN":
				w.emit(strings.ToLower(ev.Name))
			}
		}
	}()
	var lastMig, lastState string
	for first := true; !w.stopped(); first = false {
		pctx, pcancel := context.WithTimeout(ctx, 2*time.Second)
		err := w.poll(pctx, mon, first, &lastMig, &lastState)
		pcancel()
		if first {
			ready()
		}
		if err != nil {
			return
		}
		select {
		case <-w.stop:
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// poll reads the run state, the migration's status and the disks' chains.
// The first poll of a QEMU only notes the migration's status (a status
// left by an earlier migration is not an event).
func (w *sweepWatcher) poll(ctx context.Context, mon qmp.Monitor, first bool, lastMig, lastState *string) error {
	st, err := qmp.QueryStatus(ctx, mon)
	if err != nil {
		return err
	}
	if *lastState == "inmigrate" && st.State != "inmigrate" {
		w.emit("loaded")
	}
	*lastState = string(st.State)
	var mig struct {
		Status string `json:"status"`
	}
	if err := mon.Execute(ctx, "query-migrate", nil, &mig); err != nil {
		return err
	}
	if mig.Status != *lastMig && mig.Status != "" && !first {
		w.emit("migrate-" + mig.Status)
	}
	*lastMig = mig.Status
	chains, err := queryChains(ctx, mon)
	if err != nil {
		return err
	}
	w.mu.Lock()
	w.chains = chains
	w.mu.Unlock()
	return nil
}

// finish stops the watcher and returns what it saw.
func (w *sweepWatcher) finish() ([]sweepEvent, map[string][]string, bool) {
	close(w.stop)
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.events, w.chains, w.fired
}

// queryChains returns each disk's chain of images, top first, by qdev id.
func queryChains(ctx context.Context, mon qmp.Monitor) (map[string][]string, error) {
	type image struct {
		Filename string `json:"filename"`
		Backing  *image `json:"backing-image"`
	}
	var blocks []struct {
		QDev     string `json:"qdev"`
		Inserted *struct {
			Image image `json:"image"`
		} `json:"inserted"`
	}
	if err := mon.Execute(ctx, "query-block", nil, &blocks); err != nil {
		return nil, err
	}
	out := map[string][]string{}
	for _, b := range blocks {
		if b.Inserted == nil {
			continue
		}
		var chain []string
		for im := &b.Inserted.Image; im != nil; im = im.Backing {
			chain = append(chain, im.Filename)
		}
		parts := strings.Split(strings.Trim(b.QDev, "/"), "/")
		out[parts[len(parts)-1]] = chain
		if len(parts) > 2 {
			out[parts[2]] = chain
		}
	}
	return out, nil
}

// sweepChild is what the helper process needs to run an operation on the
// guest the test started.
type sweepChild struct {
	Op        string
	Socket    string
	Argv      []string
	DiskFiles map[string]string
	Pid       int
	Store     string
	UUID      string
	Log       string
}

const sweepChildEnv = "VMSNAP_TEST_SWEEP_CHILD"

// TestHelperSweepChild is not a test: it is the process the sweeps start
// and SIGKILL. It binds the domain described in its environment and runs
// one operation of sweepOps, saying on stdout when it starts and ends.
func TestHelperSweepChild(t *testing.T) {
	raw := os.Getenv(sweepChildEnv)
	if raw == "" {
		t.Skip("helper process only")
	}
	var c sweepChild
	if err := json.Unmarshal([]byte(raw), &c); err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t)
	mon, err := qmp.Dial(ctx, "unix:"+c.Socket)
	if err != nil {
		t.Fatal(err)
	}
	fs, err := store.NewFileStore(c.Store)
	if err != nil {
		t.Fatal(err)
	}
	logf, err := os.OpenFile(c.Log, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	ex := &launch.Exec{Argv: c.Argv, Socket: c.Socket, DiskFiles: c.DiskFiles, Pid: c.Pid, Stdout: logf, Stderr: logf}
	dom, err := vmsnap.Open(ctx, mon, vmsnap.Options{UUID: c.UUID, Store: fs, Launcher: ex})
	if err != nil {
		t.Fatal(err)
	}
	op := findSweepOp(c.Op)
	if op == nil {
		t.Fatalf("no operation %q", c.Op)
	}
	fmt.Println("SWEEP-START")
	err = op.start(ctx, dom).wait(ctx)
	fmt.Printf("SWEEP-DONE %v\n", err)
}

// childRun is a running helper process.
type childRun struct {
	cmd     *osexec.Cmd
	started chan struct{}
	exited  chan struct{}
	mu      sync.Mutex
	out     strings.Builder
}

// startChild runs op in a helper process on e's guest; the rig's monitor
// is closed first (QEMU serves one client per socket). It returns once
// the helper is about to start the operation.
func (e *sweepEnv) startChild(op string) *childRun {
	e.t.Helper()
	e.vm.Mon.Close()
	c := sweepChild{Op: op, Socket: e.vm.Socket, Argv: e.vm.Argv, DiskFiles: e.files, Pid: e.vm.Pid, Store: e.storeDir, UUID: e.uuid, Log: e.log}
	raw, _ := json.Marshal(c)
	cmd := osexec.Command(os.Args[0], "-test.run=^TestHelperSweepChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), sweepChildEnv+"="+string(raw))
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		e.t.Fatal(err)
	}
	cr := &childRun{cmd: cmd, started: make(chan struct{}), exited: make(chan struct{})}
	cmd.Stderr = &lockedWriter{cr}
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() {
		cmd.Process.Kill()
		<-cr.exited
	})
	go func() {
		sc := bufio.NewScanner(stdout)
		seen := false
		for sc.Scan() {
			cr.mu.Lock()
			cr.out.WriteString(sc.Text() + "\n")
			cr.mu.Unlock()
			if !seen && sc.Text() == "SWEEP-START" {
				seen = true
				close(cr.started)
			}
		}
		cmd.Wait()
		if !seen {
			close(cr.started)
		}
		close(cr.exited)
	}()
	select {
	case <-cr.started:
	case <-time.After(time.Minute):
		e.t.Fatal("the helper process did not start the operation")
	}
	return cr
}

// testLogWriter writes log lines to the test's log.
type testLogWriter struct{ t testing.TB }

func (w testLogWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

type lockedWriter struct{ c *childRun }

func (w *lockedWriter) Write(p []byte) (int, error) {
	w.c.mu.Lock()
	defer w.c.mu.Unlock()
	return w.c.out.Write(p)
}

func (c *childRun) output() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.out.String()
}

// killed reports whether the helper process ended by SIGKILL.
func (c *childRun) killed() bool {
	ws, ok := c.cmd.ProcessState.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL
}

// bindAfter binds the domain for the operation after the interrupted one,
// as a toolstack would: on the QEMU that runs; with OpenOffline and a
// Launcher when none runs and a revert that restarts QEMU was cut short
// (Reconcile finishes it); else QEMU is started again on the top images
// it last ran on (chains, as last seen; a top image that is gone was
// merged into the image below it, which is taken instead), and bound.
func (e *sweepEnv) bindAfter(ctx context.Context, chains map[string][]string) (*vmsnap.Domain, error) {
	// A QEMU that was quitting when its caller died is let go first.
	for deadline := time.Now().Add(20 * time.Second); ; {
		pids := sweepQEMUs(e.watchSock)
		if len(pids) == 0 {
			break
		}
		mctx, cancel := context.WithTimeout(ctx, time.Second)
		mon, err := qmp.Dial(mctx, "unix:"+e.vm.Socket)
		cancel()
		if err == nil {
			e.t.Cleanup(func() { mon.Close() })
			return vmsnap.Open(ctx, mon, vmsnap.Options{Store: e.fs, Launcher: e.newExec(pids[0])})
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("connect to the QEMU that runs (pids %v): %w", pids, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	recs, err := e.fs.List(ctx, e.uuid)
	if err != nil {
		return nil, err
	}
	for _, r := range recs {
		if _, ok := r.Labels["vmsnap.relaunch"]; ok {
			dom, err := vmsnap.OpenOffline(ctx, e.uuid, vmsnap.Options{Store: e.fs, Launcher: e.newExec(0)})
			if err != nil {
				return nil, err
			}
			if err := dom.Reconcile(ctx); err != nil {
				return nil, fmt.Errorf("no QEMU runs and the store holds a relaunch intent on %q; Reconcile: %w", r.Name, err)
			}
			if dom.Monitor() == nil {
				return nil, fmt.Errorf("no QEMU runs; Reconcile of the relaunch intent on %q returned nil and started none", r.Name)
			}
			return dom, nil
		}
	}
	ex := e.newExec(0)
	var spec vmsnap.LaunchSpec
	var offline []vmsnap.OfflineDisk
	for _, d := range e.vm.Disks {
		top := d.File
		for _, f := range chains[d.Device] {
			if _, err := os.Stat(f); err == nil {
				top = f
				break
			}
		}
		spec.Disks = append(spec.Disks, vmsnap.LaunchDisk{Device: d.Device, Node: d.Node, File: top})
		offline = append(offline, vmsnap.OfflineDisk{Device: d.Device, File: top})
	}
	// QEMU died, maybe in the middle of an operation: the images are
	// settled (repaired, links put back) before a QEMU holds them again.
	warn := slog.New(slog.NewTextHandler(testLogWriter{e.t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	off, err := vmsnap.OpenOffline(ctx, e.uuid, vmsnap.Options{Store: e.fs, Disks: offline, Logger: warn})
	if err != nil {
		return nil, err
	}
	if err := off.Reconcile(ctx); err != nil {
		return nil, fmt.Errorf("no QEMU runs; Reconcile of the shut-off domain on %+v: %w", offline, err)
	}
	// Started paused: what the running domain's reconcile still has to
	// do (a revert loads its snapshot again) happens before the guest
	// runs; a guest it leaves in prelaunch is then started.
	spec.ExtraArgs = append(spec.ExtraArgs, "-S")
	mon, err := ex.Start(ctx, spec)
	if err != nil {
		return nil, fmt.Errorf("restart QEMU on %+v: %w", spec.Disks, err)
	}
	e.t.Cleanup(func() { mon.Close() })
	dom, err := vmsnap.Open(ctx, mon, vmsnap.Options{Store: e.fs, Launcher: ex})
	if err != nil {
		return nil, err
	}
	if err := dom.Reconcile(ctx); err != nil {
		return nil, fmt.Errorf("Reconcile of the restarted QEMU: %w", err)
	}
	if st, err := qmp.QueryStatus(ctx, mon); err != nil {
		return nil, err
	} else if st.State == qmp.RunStatePrelaunch {
		if err := mon.Execute(ctx, "cont", nil, nil); err != nil {
			return nil, err
		}
	}
	return dom, nil
}

// sweepCheck says what a settled point must show beyond the common checks.
type sweepCheck struct {
	// post is the create+delete that must work afterwards.
	post []vmsnap.CreateFlags
	// sameQEMU: post is meant for the QEMU that ran the operation; when
	// QEMU was the victim a disk-only external create+delete is made.
	sameQEMU bool
}

// checkSettled runs the next operation on dom (an explicit Reconcile, as
// every mutating operation does first; List only reads) and checks with
// List that everything is settled: no problems, the guest runs, every listed
// snapshot is in the images, no file that nothing names, qemu-img check
// passes, the data written before the operation reads back, and another
// create and delete work. It returns the names of what a revert did:
// "reverted", "kept" (rolled back) or "".
func (e *sweepEnv) checkSettled(ctx context.Context, dom *vmsnap.Domain, chk sweepCheck) string {
	t := e.t
	t.Helper()
	if err := dom.Reconcile(ctx); err != nil {
		t.Fatalf("the next operation (reconcile) failed: %v", err)
	}
	l, err := dom.List(ctx, 0).Wait(ctx)
	if err != nil {
		t.Fatalf("list after reconcile failed: %v", err)
	}
	for _, s := range l.Snapshots {
		if len(s.Problems) > 0 {
			t.Errorf("after the next operation snapshot %q still has problems: %q", s.Name, s.Problems)
		}
	}
	mon := dom.Monitor()
	if mon == nil {
		t.Fatal("after the next operation the domain has no QEMU")
	}
	st, err := qmp.QueryStatus(ctx, mon)
	if err != nil || !st.Running {
		t.Errorf("guest after the next operation: %+v %v; want running", st, err)
	}
	for _, s := range l.Snapshots {
		if len(s.Problems) == 0 {
			e.checkSnapshotExists(s)
		}
	}
	e.checkFilesNamed(ctx)
	e.checkTops(ctx, mon)
	e.checkImages()
	revert := e.checkPatterns(ctx, mon)
	if t.Failed() {
		return revert
	}
	made := 0
	for i, f := range chk.post {
		name := "post" + strconv.Itoa(i)
		if _, err := dom.Create(ctx, vmsnap.CreateSpec{Name: name}, f).Wait(ctx); err != nil {
			t.Errorf("create %s (%v) after settling: %v", name, f, err)
			break
		}
		made++
	}
	for i := made - 1; i >= 0; i-- {
		name := "post" + strconv.Itoa(i)
		if _, err := dom.Delete(ctx, name, 0).Wait(ctx); err != nil {
			t.Errorf("delete %s after settling: %v", name, err)
		}
	}
	if !t.Failed() && len(chk.post) > 0 {
		e.checkFilesNamed(ctx)
	}
	return revert
}

// imageSnapshots returns the internal snapshots of a qcow2 image: tag ->
// vmstate size.
func imageSnapshots(t *testing.T, file string) map[string]uint64 {
	t.Helper()
	var info struct {
		Snapshots []struct {
			Name string `json:"name"`
			VM   uint64 `json:"vm-state-size"`
		} `json:"snapshots"`
	}
	if err := json.Unmarshal([]byte(qemutest.Img(t, "info", "-U", "--output=json", file)), &info); err != nil {
		t.Fatal(err)
	}
	out := map[string]uint64{}
	for _, s := range info.Snapshots {
		out[s.Name] = s.VM
	}
	return out
}

// checkSnapshotExists fails unless the images hold s as its record says.
func (e *sweepEnv) checkSnapshotExists(s *vmsnap.DomainSnapshot) {
	t := e.t
	t.Helper()
	vmstate := false
	for _, ds := range s.Disks {
		switch ds.Kind {
		case vmsnap.DiskInternal:
			tags := imageSnapshots(t, ds.File)
			size, ok := tags[ds.Name]
			if !ok {
				t.Errorf("snapshot %q is listed without problems but %s has no internal snapshot %q (it has %v)", s.Name, ds.File, ds.Name, tags)
			}
			vmstate = vmstate || size > 0
		case vmsnap.DiskExternal:
			if _, err := os.Stat(ds.File); err != nil {
				t.Errorf("snapshot %q is listed without problems but its image of %s is missing: %v", s.Name, ds.Device, err)
				continue
			}
			if _, err := os.Stat(ds.Overlay); err == nil {
				if chain := backingChain(t, ds.Overlay); !strings.Contains(chain, "image: "+ds.File+"\n") {
					t.Errorf("snapshot %q: overlay %s is not backed by its frozen image %s:\n%s", s.Name, ds.Overlay, ds.File, chain)
				}
			}
		}
	}
	switch s.Memory.Kind {
	case vmsnap.MemoryInternal:
		if !vmstate {
			t.Errorf("snapshot %q is listed as full but no disk holds its vmstate", s.Name)
		}
	case vmsnap.MemoryExternal:
		if err := migrate.StreamComplete(s.Memory.File); err != nil {
			t.Errorf("snapshot %q is listed as full but its memory file is not whole: %v", s.Name, err)
		}
	}
}

// namedFiles returns the files the domain's records name.
func (e *sweepEnv) namedFiles(ctx context.Context) map[string]bool {
	recs, err := e.fs.List(ctx, e.uuid)
	if err != nil {
		e.t.Fatalf("store list: %v", err)
	}
	named := map[string]bool{}
	for _, r := range recs {
		for _, d := range r.Disks {
			named[d.File], named[d.Overlay] = true, true
		}
		named[r.Memory.File] = true
		for k, v := range r.Labels {
			if strings.HasPrefix(k, "vmsnap.revert-overlay.") {
				named[v] = true
			}
		}
	}
	delete(named, "")
	return named
}

// checkFilesNamed fails when the guest's or the store's directory holds a
// file that neither the rig made nor a record names.
func (e *sweepEnv) checkFilesNamed(ctx context.Context) {
	t := e.t
	t.Helper()
	named := e.namedFiles(ctx)
	own := []string{"bootsector.raw", "qemu.log", "qmp.sock"}
	for _, f := range e.files {
		own = append(own, filepath.Base(f))
	}
	ents, _ := os.ReadDir(e.vm.Dir)
	for _, ent := range ents {
		p := filepath.Join(e.vm.Dir, ent.Name())
		if !slices.Contains(own, ent.Name()) && !named[p] {
			t.Errorf("file %s is named by no record", p)
		}
	}
	ents, _ = os.ReadDir(e.storeDir)
	for _, ent := range ents {
		if ent.Name() != e.uuid && ent.Name() != "lost+found" {
			t.Errorf("file %s in the store is named by no record", filepath.Join(e.storeDir, ent.Name()))
		}
	}
	ents, _ = os.ReadDir(filepath.Join(e.storeDir, e.uuid))
	for _, ent := range ents {
		n := ent.Name()
		p := filepath.Join(e.storeDir, e.uuid, n)
		meta := n == ".lock" || n == "current.xl" || n == ".owner-key" || (strings.HasPrefix(n, "snapshotdata-") && strings.HasSuffix(n, ".xl"))
		if strings.HasPrefix(n, ".spare-") {
			// The store's spare files (store.FileStore) are empty; a
			// write into one that was cut short is removed by the
			// next Lock, which settling took.
			if fi, err := os.Lstat(p); err != nil || !fi.Mode().IsRegular() || fi.Size() != 0 {
				t.Errorf("spare file %s in the store is not empty: %v", p, err)
			}
			continue
		}
		if !meta && !named[p] {
			t.Errorf("file %s in the store is named by no record", p)
		}
	}
}

// checkTops fails unless every image QEMU runs on exists and is a disk's
// own image or named by a record.
func (e *sweepEnv) checkTops(ctx context.Context, mon qmp.Monitor) {
	t := e.t
	t.Helper()
	chains, err := queryChains(ctx, mon)
	if err != nil {
		t.Fatal(err)
	}
	named := e.namedFiles(ctx)
	for dev, chain := range chains {
		for _, f := range chain {
			if _, err := os.Stat(f); err != nil {
				t.Errorf("disk %s: QEMU runs on %s, which is gone from the file system: %v", dev, f, err)
			} else if !named[f] && !slices.Contains(slices.Collect(maps.Values(e.files)), f) {
				t.Errorf("disk %s: QEMU runs on %s, which no record names", dev, f)
			}
		}
	}
}

// checkImages runs qemu-img check on every image of the guest. Leaked
// clusters (what a QEMU killed while writing leaves) are reported as a
// log line only: they waste space, they do not corrupt.
func (e *sweepEnv) checkImages() {
	t := e.t
	t.Helper()
	images, _ := filepath.Glob(filepath.Join(e.vm.Dir, "*.qcow2"))
	for _, f := range images {
		out, err := osexec.Command("qemu-img", "check", "-U", f).CombinedOutput()
		var ee *osexec.ExitError
		switch {
		case err == nil:
		case errors.As(err, &ee) && ee.ExitCode() == 3:
			t.Logf("qemu-img check %s: leaked clusters only", filepath.Base(f))
		default:
			t.Errorf("qemu-img check %s: %v\n%s", f, err, out)
		}
	}
}

// readsBack reports whether the guest's disk dev holds size bytes of b at
// off, read through QEMU (HMP qemu-io, whose output goes to the log).
func (e *sweepEnv) readsBack(ctx context.Context, mon qmp.Monitor, dev string, off, size int64, b byte) bool {
	t := e.t
	t.Helper()
	fi, err := os.Stat(e.log)
	if err != nil {
		t.Fatal(err)
	}
	cmd := fmt.Sprintf(`qemu-io -d %s "read -P %#x %d %d"`, dev, b, off, size)
	if out, err := hmp.Run(ctx, mon, cmd); err != nil || strings.TrimSpace(out) != "" {
		t.Fatalf("%s: %v %s", cmd, err, out)
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		raw, _ := os.ReadFile(e.log)
		if int64(len(raw)) >= fi.Size() {
			got := string(raw[fi.Size():])
			switch {
			case strings.Contains(got, "Pattern verification failed"):
				return false
			case strings.Contains(got, fmt.Sprintf("read %d/%d bytes at offset %d", size, size, off)):
				return true
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s printed nothing known in %s", cmd, e.log)
		}
	}
}

// checkPatterns reads back the data written before the operation. A
// pattern with an alternative must show it on every disk or on none (a
// revert is all or nothing); it returns "reverted", "kept" or "".
func (e *sweepEnv) checkPatterns(ctx context.Context, mon qmp.Monitor) string {
	t := e.t
	t.Helper()
	outcome := ""
	for _, p := range e.pats {
		if p.size > 4096 { // large data: its first and last 4 KiB
			for _, off := range []int64{p.off, p.off + p.size - 4096} {
				if !e.readsBack(ctx, mon, p.dev, off, 4096, p.want) {
					t.Errorf("disk %s: the 4096 bytes at %d written before the operation (%#x) do not read back", p.dev, off, p.want)
				}
			}
			continue
		}
		if e.readsBack(ctx, mon, p.dev, p.off, p.size, p.want) {
			if p.alt != 0 {
				outcome = agree(t, outcome, "reverted", p)
			}
			continue
		}
		if p.alt != 0 && e.readsBack(ctx, mon, p.dev, p.off, p.size, p.alt) {
			outcome = agree(t, outcome, "kept", p)
			continue
		}
		t.Errorf("disk %s: the %d bytes at %d written before the operation (%#x) do not read back", p.dev, p.size, p.off, p.want)
	}
	return outcome
}

func agree(t *testing.T, was, now string, p sweepPattern) string {
	t.Helper()
	if was != "" && was != now {
		t.Errorf("half a revert: disk %s at %d is %s, another disk is %s", p.dev, p.off, now, was)
	}
	return now
}
