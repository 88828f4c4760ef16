// Package qemutest starts real QEMU processes for tests.
//
// Start launches qemu-system-x86_64 (-machine pc,accel=tcg -nodefaults
// -display none) with qcow2 disks made by qemu-img and a tiny guest: a
// 512-byte boot sector (BootSector) that keeps incrementing a 64-bit counter
// at CounterAddr. Reading the counter with HMP xp tells a test whether the
// guest runs, is paused, or had its memory restored. Start returns a VM with
// a connected QMP client and registers a cleanup that ends the process and
// removes its files, also when the test fails.
//
// The QEMU it starts is qemu-system-x86_64 on PATH, or another version
// named by the VMSNAP_QEMU_DIR environment variable (DirEnv); Version says
// which version a test ran on. qemu-img and qemu-io always come from PATH.
//
// Facts about QEMU 7.2 worth knowing in tests: HMP qemu-io prints its result
// on QEMU's own stdout, not in the QMP reply (VM.QemuIO returns what QEMU
// printed); writes through HMP qemu-io need share-rw=on on the disk's
// device, which Start sets, and `qemu-io -d` needs a qdev id of a device
// that holds the drive itself (ide-hd here; virtio-blk-pci's id does not
// work); snapshot-save requires its devices argument.
//
// What differs on the other versions CI runs (Debian's 5.2 and 10.0): 5.2
// has neither snapshot-save jobs nor background-snapshot (both QEMU 6.0),
// and its HMP loadvm of a missing snapshot answers "Device 'disk0' does not
// have the requested snapshot 'x'" and leaves the guest paused
// (restore-vm). 10.0's `info snapshots` prints the ID in 8 columns, not 10,
// with VM_SIZE/VM_CLOCK headings, a four-digit hour in VM_CLOCK and "--"
// for no ICOUNT.
package qemutest

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vmsnap/vmsnap/qmp"
)

// Binaries the rig runs.
const (
	systemBinary = "qemu-system-x86_64"
	imgBinary    = "qemu-img"
	ioBinary     = "qemu-io"
)

// Timeouts of the rig.
const (
	dialTimeout  = 10 * time.Second // from process start to a connected monitor
	startTimeout = 10 * time.Second // from a connected monitor to a running counter
	quitGrace    = 3 * time.Second  // how long cleanup waits after quit before SIGKILL
	hmpTimeout   = 10 * time.Second // for monitor commands cleanup sends
)

// maxDisks is how many disks fit on the pc machine's two IDE buses.
const maxDisks = 4

// Available reports whether qemu-img and qemu-io are on PATH and the QEMU
// system emulator can be run: qemu-system-x86_64 on PATH, or the one under
// DirEnv's prefix when DirEnv is set.
func Available() bool {
	for _, b := range []string{imgBinary, ioBinary} {
		if _, err := exec.LookPath(b); err != nil {
			return false
		}
	}
	q, err := selectedQEMU()
	return err == nil && q.available()
}

// Require skips the test when QEMU is missing, and fails it when the
// environment has CI=true (CI must run the real-QEMU tests).
func Require(t testing.TB) {
	t.Helper()
	if Available() {
		return
	}
	msg := fmt.Sprintf("qemutest: %s, %s and %s are needed on PATH", systemBinary, imgBinary, ioBinary)
	if dir := os.Getenv(DirEnv); dir != "" {
		msg = fmt.Sprintf("qemutest: %s and %s are needed on PATH, and %s=%s must hold %s or %s",
			imgBinary, ioBinary, DirEnv, dir, filepath.Join("bin", systemBinary), filepath.Join("usr", "bin", systemBinary))
	}
	if os.Getenv("CI") == "true" {
		t.Fatal(msg + " (CI=true: not skipping)")
	}
	t.Skip(msg)
}

// RequireImg is Require for tests that run qemu-img only (no QEMU
// process): it skips when qemu-img is missing, and fails when CI=true.
func RequireImg(t testing.TB) {
	t.Helper()
	if _, err := exec.LookPath(imgBinary); err == nil {
		return
	}
	msg := fmt.Sprintf("qemutest: %s is needed on PATH", imgBinary)
	if os.Getenv("CI") == "true" {
		t.Fatal(msg + " (CI=true: not skipping)")
	}
	t.Skip(msg)
}

// Disk is one qcow2 disk of a VM.
type Disk struct {
	// Node is the qcow2 format node's name: "disk0", "disk1", …
	Node string
	// FileNode is the file protocol node under Node: "disk0-file", …
	FileNode string
	// Device is the qdev id of the disk's ide-hd device: "dev0", …
	Device string
	// File is the image's path.
	File string
}

// Loader is a file QEMU's generic loader device copies into guest memory
// at Addr when the machine starts (-device loader,force-raw=on).
type Loader struct {
	File string // the file to load
	Addr uint64 // the guest-physical address it goes to
}

// Options configure Start. The zero value is a 64 MiB guest with two 64M
// disks and a random UUID, running.
type Options struct {
	// MemoryMiB is the guest's memory size (default 64).
	MemoryMiB int
	// Disks is the number of qcow2 disks, 1 to 4 (default 2); disk0 holds
	// the boot sector.
	Disks int
	// DiskSize is each disk's virtual size in qemu-img syntax (default "64M").
	DiskSize string
	// UUID is passed with -uuid (default: a random UUID).
	UUID string
	// NoUUID omits -uuid.
	NoUUID bool
	// Paused starts QEMU with -S: the guest has not run, the counter is not
	// checked, and the caller sends cont.
	Paused bool
	// Loaders are loader devices that fill guest memory at start, e.g.
	// with many MiB of random data to make the memory state large.
	Loaders []Loader
	// ExtraArgs are appended to QEMU's command line.
	ExtraArgs []string
	// Dir holds the images, the monitor socket (when its path is short
	// enough) and the output log (default t.TempDir()). Files Start creates
	// there are removed at cleanup.
	Dir string
}

// VM is a QEMU process started by Start or Relaunch.
type VM struct {
	// Dir is the directory holding the VM's images and log.
	Dir string
	// Socket is the QMP unix socket's path.
	Socket string
	// UUID is the VM's -uuid ("" with Options.NoUUID).
	UUID string
	// Disks are the VM's disks, disk0 first.
	Disks []Disk
	// Argv is QEMU's full command line, Argv[0] the binary, so a launcher
	// can start the same VM again once this process is gone (QEMU
	// replaces the stale monitor socket file). Relaunch does that for
	// tests.
	Argv []string
	// Mon is the connected QMP client.
	Mon *qmp.Client
	// Pid is QEMU's process id.
	Pid int

	logFile string
	cmd     *exec.Cmd
	exited  chan struct{} // closed once cmd.Wait returned
	killed  sync.Once

	baseArgv   []string      // the command line Start built
	generation int           // 0 for Start, n for the nth Relaunch
	startup    time.Duration // process start to a connected monitor
	bootTime   time.Duration // process start to the first counter increment seen
}

// Start creates the VM's disk images, launches QEMU, connects to its QMP
// monitor and, unless opts.Paused, waits until the guest's counter
// advances. It skips or fails the test as Require does when QEMU is
// missing, and calls t.Fatal on any failure, with QEMU's output. A cleanup
// registered on t quits QEMU (SIGKILL after a grace period), reaps it,
// closes the monitor and removes the files Start created.
func Start(t testing.TB, opts Options) *VM {
	t.Helper()
	Require(t)
	opts = withDefaults(t, opts)
	if opts.Disks < 1 || opts.Disks > maxDisks {
		t.Fatalf("qemutest: Options.Disks = %d, want 1 to %d", opts.Disks, maxDisks)
	}

	vm := &VM{Dir: opts.Dir, UUID: opts.UUID}
	var created []string // files and dirs to remove at cleanup, in order
	t.Cleanup(func() {
		vm.stop(t)
		for _, f := range created {
			if err := os.RemoveAll(f); err != nil {
				t.Errorf("qemutest: cleanup: %v", err)
			}
		}
	})

	// Disk images.
	for i := 0; i < opts.Disks; i++ {
		d := Disk{
			Node:     fmt.Sprintf("disk%d", i),
			FileNode: fmt.Sprintf("disk%d-file", i),
			Device:   fmt.Sprintf("dev%d", i),
			File:     filepath.Join(opts.Dir, fmt.Sprintf("disk%d.qcow2", i)),
		}
		created = append(created, d.File)
		if i == 0 {
			raw := filepath.Join(opts.Dir, "bootsector.raw")
			created = append(created, raw)
			if err := os.WriteFile(raw, BootSector(), 0o600); err != nil {
				t.Fatalf("qemutest: write boot sector: %v", err)
			}
			Img(t, "convert", "-q", "-f", "raw", "-O", "qcow2", raw, d.File)
			Img(t, "resize", "-q", "-f", "qcow2", d.File, opts.DiskSize)
		} else {
			Img(t, "create", "-q", "-f", "qcow2", d.File, opts.DiskSize)
		}
		vm.Disks = append(vm.Disks, d)
	}

	// Monitor socket: unix socket paths are limited to 108 bytes.
	vm.Socket = filepath.Join(opts.Dir, "qmp.sock")
	if len(vm.Socket) > 100 {
		sockDir, err := os.MkdirTemp("", "qemutest")
		if err != nil {
			t.Fatalf("qemutest: socket dir: %v", err)
		}
		created = append(created, sockDir)
		vm.Socket = filepath.Join(sockDir, "qmp.sock")
	}
	created = append(created, vm.Socket)

	q, err := selectedQEMU()
	if err != nil {
		t.Fatal(err)
	}
	vm.Argv = buildArgv(q, vm, opts)
	vm.baseArgv = append([]string(nil), vm.Argv...)
	vm.logFile = filepath.Join(opts.Dir, "qemu.log")
	created = append(created, vm.logFile)
	started := vm.launch(t)
	if !opts.Paused {
		ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
		defer cancel()
		if err := vm.waitCounter(ctx, started); err != nil {
			t.Fatalf("qemutest: guest counter: %v\nQEMU output:\n%s", err, vm.Output())
		}
	}
	t.Logf("qemutest: QEMU pid %d started in %v", vm.Pid, time.Since(started).Round(time.Millisecond))
	return vm
}

// launch starts QEMU from vm.Argv with its output in vm.logFile and
// connects to its monitor. It returns when the process was started.
func (vm *VM) launch(t testing.TB) (started time.Time) {
	t.Helper()
	vm.exited = make(chan struct{})
	logf, err := os.OpenFile(vm.logFile, os.O_CREATE|os.O_WRONLY|os.O_TRUNC|os.O_APPEND, 0o600)
	if err != nil {
		close(vm.exited)
		t.Fatalf("qemutest: %v", err)
	}
	defer logf.Close() // the child holds its own descriptor

	vm.cmd = exec.Command(vm.Argv[0], vm.Argv[1:]...)
	vm.cmd.Stdout, vm.cmd.Stderr = logf, logf
	vm.cmd.Dir = vm.Dir
	vm.cmd.SysProcAttr = sysProcAttr()
	started = time.Now()
	if err := vm.cmd.Start(); err != nil {
		close(vm.exited)
		t.Fatalf("qemutest: start %s: %v", vm.Argv[0], err)
	}
	vm.Pid = vm.cmd.Process.Pid
	go func() {
		vm.cmd.Wait()
		close(vm.exited)
	}()
	vm.Mon = vm.dial(t)
	vm.startup = time.Since(started)
	return started
}

// Relaunch ends vm's QEMU (quit, SIGKILL if it does not exit; nothing if
// it is already gone, e.g. after Kill) and starts the command line Start
// built again, with extraArgs appended (such as "-S" or "-incoming",
// "defer"; the extra arguments of earlier relaunches are not kept), on the
// same disks and monitor socket. It returns the new VM, connected; its
// guest is not checked (Counter tells whether it runs). The new process
// and its output log are cleaned up with t; the disks stay owned by the
// cleanup of the VM that Start returned.
func (vm *VM) Relaunch(t testing.TB, extraArgs ...string) *VM {
	t.Helper()
	vm.stop(t)
	// QEMU replaces the old socket file itself.
	next := &VM{
		Dir:        vm.Dir,
		Socket:     vm.Socket,
		UUID:       vm.UUID,
		Disks:      append([]Disk(nil), vm.Disks...),
		Argv:       append(append([]string(nil), vm.baseArgv...), extraArgs...),
		baseArgv:   vm.baseArgv,
		generation: vm.generation + 1,
	}
	next.logFile = filepath.Join(vm.Dir, fmt.Sprintf("qemu.%d.log", next.generation))
	t.Cleanup(func() {
		next.stop(t)
		if err := os.Remove(next.logFile); err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Errorf("qemutest: cleanup: %v", err)
		}
	})
	started := next.launch(t)
	t.Logf("qemutest: QEMU relaunched as pid %d in %v", next.Pid, time.Since(started).Round(time.Millisecond))
	return next
}

// withDefaults fills in opts' zero fields.
func withDefaults(t testing.TB, opts Options) Options {
	if opts.MemoryMiB == 0 {
		opts.MemoryMiB = 64
	}
	if opts.Disks == 0 {
		opts.Disks = 2
	}
	if opts.DiskSize == "" {
		opts.DiskSize = "64M"
	}
	if opts.NoUUID {
		opts.UUID = ""
	} else if opts.UUID == "" {
		opts.UUID = randomUUID(t)
	}
	if opts.Dir == "" {
		opts.Dir = t.TempDir()
	}
	return opts
}

// buildArgv returns QEMU's command line for vm: the binary DirEnv selects
// and its -L options, then the machine.
func buildArgv(q systemQEMU, vm *VM, opts Options) []string {
	argv := append(q.argv0(),
		"-machine", "pc,accel=tcg",
		"-nodefaults",
		"-display", "none",
		"-m", strconv.Itoa(opts.MemoryMiB),
	)
	if opts.UUID != "" {
		argv = append(argv, "-uuid", opts.UUID)
	}
	if opts.Paused {
		argv = append(argv, "-S")
	}
	for i, d := range vm.Disks {
		argv = append(argv,
			"-blockdev", "driver=file,filename="+optValue(d.File)+",node-name="+d.FileNode,
			"-blockdev", "driver=qcow2,file="+d.FileNode+",node-name="+d.Node)
		dev := fmt.Sprintf("ide-hd,drive=%s,id=%s,bus=ide.%d,unit=%d,share-rw=on", d.Node, d.Device, i/2, i%2)
		if i == 0 {
			dev += ",bootindex=0"
		}
		argv = append(argv, "-device", dev)
	}
	for _, l := range opts.Loaders {
		argv = append(argv, "-device", fmt.Sprintf("loader,file=%s,addr=%#x,force-raw=on", optValue(l.File), l.Addr))
	}
	argv = append(argv, "-qmp", "unix:"+optValue(vm.Socket)+",server=on,wait=off")
	return append(argv, opts.ExtraArgs...)
}

// optValue escapes a value for QEMU's comma-separated option syntax.
func optValue(s string) string { return strings.ReplaceAll(s, ",", ",,") }

// randomUUID returns a random (version 4) UUID.
func randomUUID(t testing.TB) string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatalf("qemutest: uuid: %v", err)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// dial connects to the monitor, retrying until the socket accepts or QEMU
// exits.
func (vm *VM) dial(t testing.TB) *qmp.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), dialTimeout)
	defer cancel()
	var last error
	for {
		attempt, cancelAttempt := context.WithTimeout(ctx, time.Second)
		c, err := qmp.Dial(attempt, "unix:"+vm.Socket)
		cancelAttempt()
		if err == nil {
			return c
		}
		last = err
		select {
		case <-vm.exited:
			t.Fatalf("qemutest: QEMU exited before its monitor answered (%v): %v\nQEMU output:\n%s",
				vm.cmd.ProcessState, last, vm.Output())
		case <-ctx.Done():
			t.Fatalf("qemutest: connect to %s: %v\nQEMU output:\n%s", vm.Socket, last, vm.Output())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// waitCounter waits until the counter advances between two reads. The
// firmware may leave other values at CounterAddr before the boot sector
// runs, so the reads are compared pairwise and the guest's zeroing re-arms
// the check.
func (vm *VM) waitCounter(ctx context.Context, started time.Time) error {
	var prev uint64
	var prevAt time.Duration
	for {
		n, err := vm.Counter(ctx)
		if err != nil {
			return err
		}
		if prev != 0 && n > prev {
			vm.bootTime = prevAt
			return nil
		}
		prev, prevAt = n, time.Since(started)
		select {
		case <-ctx.Done():
			return fmt.Errorf("counter at %#x did not advance (last read %#x): %w", CounterAddr, prev, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// HMP runs an HMP command line through QMP's human-monitor-command and
// returns its output as QEMU printed it (HMP errors are output too).
func (vm *VM) HMP(ctx context.Context, cmdline string) (string, error) {
	var out string
	err := vm.Mon.Execute(ctx, "human-monitor-command", map[string]string{"command-line": cmdline}, &out)
	if err != nil {
		return "", fmt.Errorf("qemutest: hmp %q: %w", cmdline, err)
	}
	return out, nil
}

// Counter reads the guest's 64-bit counter at CounterAddr with HMP xp.
func (vm *VM) Counter(ctx context.Context) (uint64, error) {
	out, err := vm.HMP(ctx, fmt.Sprintf("xp /1gx %#x", CounterAddr))
	if err != nil {
		return 0, err
	}
	return parseXP(out)
}

// parseXP parses xp /1gx output: "0000000000010000: 0x00000000008c3aa7".
func parseXP(out string) (uint64, error) {
	_, val, ok := strings.Cut(strings.TrimSpace(out), ": ")
	if !ok || !strings.HasPrefix(val, "0x") {
		return 0, fmt.Errorf("qemutest: unexpected xp output %q", out)
	}
	n, err := strconv.ParseUint(val[2:], 16, 64)
	if err != nil {
		return 0, fmt.Errorf("qemutest: unexpected xp output %q: %w", out, err)
	}
	return n, nil
}

// Output returns what QEMU has printed on its stdout and stderr so far.
func (vm *VM) Output() string {
	b, err := os.ReadFile(vm.logFile)
	if err != nil {
		return fmt.Sprintf("(qemutest: read QEMU output: %v)", err)
	}
	return string(b)
}

// QemuIO runs a qemu-io command (e.g. "write -P 0xab 0 4096") on the disk
// whose qdev id is device (e.g. "dev1"), through HMP `qemu-io -d`, and
// returns what QEMU printed while it ran: qemu-io reports on QEMU's stdout,
// including failures such as "Pattern verification failed". An HMP error
// (unknown device, …) is returned as an error.
func (vm *VM) QemuIO(ctx context.Context, device, cmd string) (string, error) {
	if device == "" || strings.ContainsAny(device, " \t\r\n\"'\\") {
		return "", fmt.Errorf("qemutest: qemu-io: bad device name %q", device)
	}
	before := vm.outputSize()
	out, err := vm.HMP(ctx, "qemu-io -d "+device+" "+hmpQuote(cmd))
	if err != nil {
		return "", err
	}
	if strings.TrimSpace(out) != "" {
		return "", fmt.Errorf("qemutest: qemu-io -d %s %q: %s", device, cmd, strings.TrimSpace(out))
	}
	b, err := os.ReadFile(vm.logFile)
	if err != nil {
		return "", fmt.Errorf("qemutest: read QEMU output: %w", err)
	}
	if int64(len(b)) < before {
		before = 0
	}
	return string(b[before:]), nil
}

func (vm *VM) outputSize() int64 {
	fi, err := os.Stat(vm.logFile)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// hmpQuote quotes s as one HMP string argument.
func hmpQuote(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`, "\r", `\r`)
	return `"` + r.Replace(s) + `"`
}

// Kill sends SIGKILL to QEMU at once (to simulate a crash) and waits until
// it has exited. It is safe to call more than once and after cleanup.
func (vm *VM) Kill() {
	if vm.exited == nil { // never launched
		return
	}
	vm.killed.Do(func() {
		if vm.cmd != nil && vm.cmd.Process != nil {
			vm.cmd.Process.Kill()
		}
	})
	<-vm.exited
}

// Exited returns a channel that is closed once QEMU has exited and been
// reaped.
func (vm *VM) Exited() <-chan struct{} { return vm.exited }

// stop ends QEMU: quit through the monitor, SIGKILL after quitGrace.
func (vm *VM) stop(t testing.TB) {
	if vm.cmd == nil || vm.cmd.Process == nil {
		return
	}
	select {
	case <-vm.exited:
	default:
		if vm.Mon != nil {
			ctx, cancel := context.WithTimeout(context.Background(), quitGrace)
			err := vm.Mon.Execute(ctx, "quit", nil, nil)
			cancel()
			if err != nil && !errors.Is(err, qmp.ErrClosed) {
				t.Logf("qemutest: quit pid %d: %v", vm.Pid, err)
			}
		} else {
			vm.cmd.Process.Signal(syscall.SIGTERM)
		}
		select {
		case <-vm.exited:
		case <-time.After(quitGrace):
			t.Logf("qemutest: pid %d did not exit %v after quit; killing it", vm.Pid, quitGrace)
		}
	}
	vm.Kill()
	if vm.Mon != nil {
		vm.Mon.Close()
	}
}

// Img runs qemu-img with args and returns its stdout; it fails the test
// with qemu-img's output when qemu-img fails.
func Img(t testing.TB, args ...string) string {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(imgBinary, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("qemutest: %s %s: %v\n%s%s", imgBinary, strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String()
}

// ImgSnapshots returns the tags of the internal snapshots in the qcow2
// image file, in the order `qemu-img snapshot -l -U` lists them (it reads
// the image while QEMU may hold it).
func ImgSnapshots(t testing.TB, file string) []string {
	t.Helper()
	tags, err := parseSnapshotTags(Img(t, "snapshot", "-l", "-U", file))
	if err != nil {
		t.Fatalf("qemutest: qemu-img snapshot -l %s: %v", file, err)
	}
	return tags
}

// parseSnapshotTags extracts the TAG column of a qemu-img snapshot listing.
// A row is "ID TAG VM-SIZE UNIT DATE TIME CLOCK [ICOUNT]"; tags may contain
// spaces, so the row is split from both ends.
func parseSnapshotTags(out string) ([]string, error) {
	tags := []string{}
	for _, line := range strings.Split(out, "\n") {
		line = strings.TrimRight(line, "\r ")
		if line == "" || line == "Snapshot list:" || strings.HasPrefix(line, "ID ") {
			continue
		}
		if len(line) < 10 {
			return nil, fmt.Errorf("unexpected line %q", line)
		}
		// ID is left-aligned in 9 columns plus a space; the tag follows.
		id, _, _ := strings.Cut(line, " ")
		start := len(id) + 1
		if len(id) < 10 {
			start = 10
		}
		rest := line[start:]
		f := strings.Fields(rest)
		// From the right: [icount] clock time date unit size.
		n := 5
		if len(f) > 0 && !strings.Contains(f[len(f)-1], ":") {
			n = 6 // an icount column is present
		}
		if len(f) < n+1 {
			return nil, fmt.Errorf("unexpected line %q", line)
		}
		sizeTok := f[len(f)-n]
		idx := strings.LastIndex(rest, " "+sizeTok+" "+f[len(f)-n+1]+" ")
		if idx < 0 {
			return nil, fmt.Errorf("unexpected line %q", line)
		}
		tags = append(tags, strings.TrimRight(rest[:idx], " "))
	}
	return tags, nil
}

// ReadPattern reports whether length bytes at offset of the qcow2 image
// file all equal pattern, reading offline with `qemu-io -r -U` (safe while
// QEMU holds the image). It fails the test when qemu-io cannot read.
func ReadPattern(t testing.TB, file string, offset, length int64, pattern byte) bool {
	t.Helper()
	cmdline := fmt.Sprintf("read -P %#x %d %d", pattern, offset, length)
	var out bytes.Buffer
	cmd := exec.Command(ioBinary, "-r", "-U", "-f", "qcow2", "-c", cmdline, file)
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	text := out.String()
	switch {
	case strings.Contains(text, "Pattern verification failed"):
		return false
	case err != nil:
		t.Fatalf("qemutest: %s -c %q %s: %v\n%s", ioBinary, cmdline, file, err, text)
	case !strings.Contains(text, fmt.Sprintf("read %d/%d bytes", length, length)):
		t.Fatalf("qemutest: %s -c %q %s: unexpected output:\n%s", ioBinary, cmdline, file, text)
	}
	return true
}
