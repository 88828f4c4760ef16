// Package launch starts QEMU processes for vmsnap.
//
// vmsnap never guesses a QEMU command line: reverting an external snapshot
// needs a new QEMU process, and the caller says how to start it by
// supplying a vmsnap.Launcher. Exec is a Launcher that runs a fixed argv
// (the domain's own command line) and connects to the QMP unix socket that
// argv serves. It parses the argv's block configuration (-drive in all its
// forms, -hda … -hdd, -pflash, -blockdev in key=value and JSON syntax,
// -device, -machine pflashN=) and moves each disk a relaunch names onto
// its new top image with that image's format and backing chain: a qcow2
// overlay over a raw disk is opened as qcow2 over the raw image, never as
// raw.
//
// SplitCommandLine turns a command line typed by a person into argv words
// without a shell, and ReadArgvFile reads one word per line from a file;
// DiskFiles finds which path in the argv each running disk was opened
// from.
package launch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vmsnap/vmsnap"
	"github.com/vmsnap/vmsnap/internal/qemu"
	"github.com/vmsnap/vmsnap/qmp"
)

var (
	_ vmsnap.Launcher      = (*Exec)(nil)
	_ vmsnap.LaunchChecker = (*Exec)(nil)
)

// Exec stops and starts a domain's QEMU from a command line. Set the exported
// fields before the first Start and leave them to Exec afterwards: each
// Start updates Argv, DiskFiles and Pid to describe the process it
// started. Its methods are safe for concurrent use.
type Exec struct {
	// Argv is QEMU's command line, Argv[0] the binary (looked up in PATH
	// when it has no slash). It must serve the QMP monitor on Socket, e.g.
	// with "-qmp", "unix:/run/vm1/qmp.sock,server=on,wait=off".
	Argv []string
	// Socket is the path of the QMP unix socket Argv serves.
	Socket string
	// DiskFiles maps each disk's device (qdev id or block backend name, as
	// vmsnap names disks) to the image path that appears in Argv for it,
	// as a word of its own or as an option value (filename=/x/a.qcow2,
	// with QEMU's ",," escaping of commas). It is optional: Exec finds a
	// disk of a LaunchSpec in Argv by its device (the -device id=, or the
	// -drive's block backend name: id= or "ide0-hd0", "virtio0", …) or its
	// node name (-blockdev node-name=), and uses DiskFiles only for a disk
	// it knows by neither. A machine flash is also known by "pflashN" and
	// by "system.flashN" (query-block's qdev /machine/system.flashN, which
	// is how vmsnap names a flash given by -machine pflashN=<node>), so it
	// is found after an external snapshot put it on an overlay node the
	// command line does not declare.
	DiskFiles map[string]string
	// Pid is the running QEMU's process id, when this Exec did not start
	// it; Stop waits for it to exit after quit. Zero means unknown:
	// Stop then waits until Socket stops accepting connections.
	Pid int
	// Stdout and Stderr receive the new process's output. When both are
	// nil, the output goes to a file that Start reads to explain a process
	// that died before its monitor answered: in LogDir when set, else a
	// temporary file that Start removes before it returns.
	Stdout, Stderr io.Writer
	// LogDir, when set and Stdout and Stderr are nil, keeps QEMU's output
	// in LogDir/qemu.log (created with mode 0600): each Start appends a
	// line naming the time and the command line, then the process's
	// output. A process that fails to start has its output
	// quoted in the error and kept there. Callers should point LogDir at
	// the domain's own directory (next to its images and snapshot store),
	// so no file is left where nothing names it.
	LogDir string
	// QemuImg is the qemu-img binary used to inspect a disk's new image
	// (its format and backing chain) before a relaunch; "" means
	// "qemu-img" in PATH.
	QemuImg string
	// Dir is the new process's working directory ("" means the caller's).
	Dir string
	// QuitTimeout bounds how long Stop waits for the old process to
	// exit after quit (default 10s); then it fails, it never kills a
	// process it did not start.
	QuitTimeout time.Duration
	// StartTimeout bounds how long Start waits for the new QEMU's monitor
	// to answer (default 60s); then it kills the process it started.
	StartTimeout time.Duration

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{} // closed when cmd has been reaped
	// opened are the monitors Start returned: Stop closes those, and
	// never a monitor the caller opened itself.
	opened map[qmp.Monitor]bool
}

// ErrLaunch is wrapped by errors about the command line or the process.
var ErrLaunch = errors.New("launch")

// Check reports whether e can start QEMU: a command line, a socket the
// command line serves, and every disk path present in it.
func (e *Exec) Check() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.check()
}

func (e *Exec) check() error {
	if len(e.Argv) == 0 || e.Argv[0] == "" {
		return fmt.Errorf("%w: empty QEMU command line", ErrLaunch)
	}
	if e.Socket == "" {
		return fmt.Errorf("%w: no QMP socket path", ErrLaunch)
	}
	if !mentionsPath(e.Argv, e.Socket) {
		return fmt.Errorf("%w: the QEMU command line does not serve QMP on %s (add -qmp unix:%s,server=on,wait=off)", ErrLaunch, e.Socket, EscapeOptionValue(e.Socket))
	}
	for dev, file := range e.DiskFiles {
		if _, n := replacePath(e.Argv, map[string]string{file: file}); n[file] == 0 {
			return fmt.Errorf("%w: disk %s: its image %s does not appear in the QEMU command line", ErrLaunch, dev, file)
		}
	}
	return nil
}

// Stop implements vmsnap.Launcher: it sends quit on old (when not nil),
// closes it if this Exec's Start opened it (never a monitor the caller
// opened: the caller closes its own), and waits until the old process is
// gone: the process this Exec started, else the one Pid names, else until
// Socket stops accepting connections. It never kills a process it did not
// start.
func (e *Exec) Stop(ctx context.Context, old qmp.Monitor) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.stopOld(ctx, old)
}

// Start implements vmsnap.Launcher: it substitutes spec.Disks into the
// command line (refusing a disk that DiskFiles does not know), removes a
// stale socket file, starts Argv with spec.ExtraArgs appended, and dials
// Socket until the new QEMU answers or ctx ends. The new process runs in a
// session of its own: it keeps running when the caller exits and does not
// get the caller's terminal signals.
func (e *Exec) Start(ctx context.Context, spec vmsnap.LaunchSpec) (qmp.Monitor, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	base, files, err := e.plan(ctx, spec)
	if err != nil {
		return nil, err
	}
	return e.startPlanned(ctx, base, files, spec.ExtraArgs)
}

// CheckLaunch implements vmsnap.LaunchChecker: it builds the whole
// command line Start would run for spec, without starting or stopping
// anything, and reports why it cannot: an incomplete command line (no
// binary, no QMP socket), a disk of spec that no -drive, -blockdev or
// -device of the command line declares, a new top image that is missing,
// whose backing chain does not open (qemu-img info --backing-chain), or
// that the disk's declaration cannot be moved to (snapshot=on, a json:
// pseudo-file, a network protocol). Errors wrap ErrLaunch.
func (e *Exec) CheckLaunch(ctx context.Context, spec vmsnap.LaunchSpec) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	_, _, err := e.plan(ctx, spec)
	return err
}

// Plan returns the command line Start would run for spec (without
// spec.ExtraArgs), checked as CheckLaunch checks it.
func (e *Exec) Plan(ctx context.Context, spec vmsnap.LaunchSpec) ([]string, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	argv, _, err := e.plan(ctx, spec)
	return argv, err
}

// Relaunch is Stop followed by Start, with the command line checked and
// the disks substituted before old is told to quit, so a refusal leaves
// the domain running.
func (e *Exec) Relaunch(ctx context.Context, old qmp.Monitor, spec vmsnap.LaunchSpec) (qmp.Monitor, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	base, files, err := e.plan(ctx, spec)
	if err != nil {
		return nil, err
	}
	if err := e.stopOld(ctx, old); err != nil {
		return nil, err
	}
	return e.startPlanned(ctx, base, files, spec.ExtraArgs)
}

// plan checks e and returns the command line and disk files with
// spec.Disks substituted (see blockGraph.rewriteDisk).
func (e *Exec) plan(ctx context.Context, spec vmsnap.LaunchSpec) (base []string, files map[string]string, err error) {
	if err := e.check(); err != nil {
		return nil, nil, err
	}
	g, err := parseBlockGraph(e.Argv)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %w", ErrLaunch, err)
	}
	g.dir = e.Dir
	files = map[string]string{}
	for dev, f := range e.DiskFiles {
		files[dev] = f
	}
	seen := map[*disk]string{}
	for _, ld := range spec.Disks {
		name := diskName(ld)
		if ld.File == "" {
			return nil, nil, fmt.Errorf("%w: disk %s: empty image path", ErrLaunch, name)
		}
		path := e.DiskFiles[ld.Device]
		if path == "" && ld.Node != "" {
			path = e.DiskFiles[ld.Node]
		}
		d, err := g.find([]string{ld.Device, ld.Node}, path)
		if err != nil {
			return nil, nil, fmt.Errorf("%w: disk %s: %w", ErrLaunch, name, err)
		}
		if d == nil {
			return nil, nil, fmt.Errorf("%w: disk %s: the QEMU command line declares no -drive, -blockdev or -device for it (and DiskFiles names no image of it in the command line), so it cannot be moved to %s", ErrLaunch, name, ld.File)
		}
		if prev, dup := seen[d]; dup && prev != ld.File {
			return nil, nil, fmt.Errorf("%w: disk %s: asked to open both %s and %s", ErrLaunch, name, prev, ld.File)
		}
		seen[d] = ld.File
		if g.abs(ld.File) == g.abs(g.file(d)) {
			continue
		}
		if err := g.checkRewrite(d); err != nil {
			return nil, nil, fmt.Errorf("%w: disk %s cannot be moved to %s: %w", ErrLaunch, name, ld.File, err)
		}
		img, err := inspectImage(ctx, e.QemuImg, ld.File)
		if err != nil {
			return nil, nil, fmt.Errorf("%w: disk %s: new image: %w", ErrLaunch, name, err)
		}
		img.File = ld.File
		if _, err := g.rewriteDisk(d, img); err != nil {
			return nil, nil, fmt.Errorf("%w: disk %s cannot be moved to %s: %w", ErrLaunch, name, ld.File, err)
		}
		for _, k := range []string{ld.Device, ld.Node} {
			if _, ok := files[k]; ok {
				files[k] = ld.File
			}
		}
	}
	return g.build(), files, nil
}

// startPlanned starts base+extra and records the new process's state.
func (e *Exec) startPlanned(ctx context.Context, base []string, files map[string]string, extra []string) (qmp.Monitor, error) {
	if e.cmd != nil {
		select {
		case <-e.exited:
		default:
			return nil, fmt.Errorf("%w: the QEMU this launcher started (pid %d) still runs; Stop it first", ErrLaunch, e.cmd.Process.Pid)
		}
	}
	// Never take the socket from a QEMU that still runs: it would lose its
	// monitor, and a second QEMU would open the same images.
	if e.Pid > 0 && !processGone(e.Pid) {
		return nil, fmt.Errorf("%w: the domain's QEMU (pid %d) still runs; Stop it first", ErrLaunch, e.Pid)
	}
	if socketAnswers(e.Socket) {
		return nil, fmt.Errorf("%w: something still serves %s; Stop the domain's QEMU first", ErrLaunch, e.Socket)
	}
	if err := removeStaleSocket(e.Socket); err != nil {
		return nil, err
	}
	argv := append(append([]string(nil), base...), extra...)
	mon, err := e.start(ctx, argv)
	if err != nil {
		return nil, err
	}
	e.Argv, e.DiskFiles, e.Pid = base, files, e.cmd.Process.Pid
	if e.opened == nil {
		e.opened = map[qmp.Monitor]bool{}
	}
	e.opened[mon] = true
	return mon, nil
}

func diskName(d vmsnap.LaunchDisk) string {
	if d.Device != "" {
		return d.Device
	}
	return d.Node
}

// stopOld quits the old QEMU and waits until it is gone.
func (e *Exec) stopOld(ctx context.Context, old qmp.Monitor) error {
	timeout := e.QuitTimeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if old != nil {
		err := qemu.Quit(wctx, old)
		if e.opened[old] {
			old.Close()
			delete(e.opened, old)
		}
		if err != nil && !errors.Is(err, qmp.ErrClosed) {
			return fmt.Errorf("%w: quit the old QEMU: %w", ErrLaunch, err)
		}
	}
	// Wait for the process this Exec started and for the one Pid names
	// (they differ after a Start that failed); with neither, for the
	// socket to stop answering.
	if e.cmd != nil {
		select {
		case <-e.exited:
		case <-wctx.Done():
			return fmt.Errorf("%w: old QEMU (pid %d) did not exit: %w", ErrLaunch, e.cmd.Process.Pid, wctx.Err())
		}
	}
	switch {
	case e.Pid > 0:
		for !processGone(e.Pid) {
			select {
			case <-wctx.Done():
				return fmt.Errorf("%w: old QEMU (pid %d) did not exit: %w", ErrLaunch, e.Pid, wctx.Err())
			case <-time.After(10 * time.Millisecond):
			}
		}
		return nil
	case e.cmd != nil:
		return nil
	default:
		for socketAnswers(e.Socket) {
			select {
			case <-wctx.Done():
				return fmt.Errorf("%w: the old QEMU still accepts connections on %s: %w", ErrLaunch, e.Socket, wctx.Err())
			case <-time.After(10 * time.Millisecond):
			}
		}
		return nil
	}
}

// processGone reports whether pid has exited (or is a zombie waiting for
// its parent to reap it: it holds no files any more).
func processGone(pid int) bool {
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return true
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return errors.Is(err, fs.ErrNotExist)
	}
	// The state follows the command name in parentheses, which may itself
	// hold parentheses: take the last ')'.
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		st := s[i+2]
		return st == 'Z' || st == 'X'
	}
	return false
}

// socketAnswers reports whether something accepts connections on path.
func socketAnswers(path string) bool {
	c, err := net.DialTimeout("unix", path, 200*time.Millisecond)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// removeStaleSocket removes the socket file a dead QEMU left behind, and
// refuses to remove anything that is not a socket.
func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("%w: %w", ErrLaunch, err)
	}
	if fi.Mode()&fs.ModeSocket == 0 {
		return fmt.Errorf("%w: %s exists and is not a socket; not removing it", ErrLaunch, path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%w: remove stale socket: %w", ErrLaunch, err)
	}
	return nil
}

// start runs argv and connects to its monitor.
func (e *Exec) start(ctx context.Context, argv []string) (qmp.Monitor, error) {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = e.Dir
	cmd.Stdout, cmd.Stderr = e.Stdout, e.Stderr
	// Its own session: a Ctrl-C meant for the caller does not reach the
	// domain, and the domain outlives the caller.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	var (
		logf   *os.File
		logOff int64
	)
	if e.Stdout == nil && e.Stderr == nil {
		f, err := e.openLog()
		if err != nil {
			return nil, err
		}
		logf = f
		defer func() {
			if e.LogDir == "" {
				os.Remove(f.Name())
			}
			f.Close()
		}()
		fmt.Fprintf(f, "=== %s vmsnap launch: %s\n", time.Now().Format(time.RFC3339), strings.Join(argv, " "))
		logOff, _ = f.Seek(0, io.SeekEnd)
		cmd.Stdout, cmd.Stderr = f, f
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("%w: start %s: %w", ErrLaunch, argv[0], err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		close(exited)
	}()
	e.cmd, e.exited = cmd, exited

	// A command line that never serves QMP on Socket must not make the
	// caller wait for ever.
	timeout := e.StartTimeout
	if timeout <= 0 {
		timeout = time.Minute
	}
	ctx, cancelStart := context.WithTimeout(ctx, timeout)
	defer cancelStart()
	var last error
	for {
		attempt, cancel := context.WithTimeout(ctx, time.Second)
		mon, err := qmp.Dial(attempt, "unix:"+e.Socket)
		cancel()
		if err == nil {
			return mon, nil
		}
		last = err
		select {
		case <-exited:
			msg := ""
			if logf != nil {
				if b, rerr := os.ReadFile(logf.Name()); rerr == nil && int64(len(b)) > logOff {
					msg = ": " + strings.TrimSpace(lastBytes(b[logOff:], 2048))
				}
				if e.LogDir != "" {
					msg += " (output in " + logf.Name() + ")"
				}
			}
			return nil, fmt.Errorf("%w: QEMU (pid %d) exited (%v) before its monitor answered%s", ErrLaunch, cmd.Process.Pid, cmd.ProcessState, msg)
		case <-ctx.Done():
			cmd.Process.Kill()
			<-exited
			return nil, fmt.Errorf("%w: connect to %s: %w (last attempt: %w)", ErrLaunch, e.Socket, ctx.Err(), last)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// openLog opens the file QEMU's output goes to: LogDir/qemu.log, else a
// temporary file.
func (e *Exec) openLog() (*os.File, error) {
	if e.LogDir == "" {
		f, err := os.CreateTemp("", "vmsnap-launch-*.log")
		if err != nil {
			return nil, fmt.Errorf("%w: output file: %w", ErrLaunch, err)
		}
		return f, nil
	}
	f, err := os.OpenFile(filepath.Join(e.LogDir, "qemu.log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("%w: output file: %w", ErrLaunch, err)
	}
	return f, nil
}

func lastBytes(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// Process returns the QEMU process the last Start started, nil before
// the first.
func (e *Exec) Process() *os.Process {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.cmd == nil {
		return nil
	}
	return e.cmd.Process
}

// Close kills the QEMU process the last Start started, if it still
// runs, and waits for it. It does nothing to a process it did not start.
// It is safe to call more than once.
func (e *Exec) Close() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.cmd == nil {
		return nil
	}
	select {
	case <-e.exited:
		return nil
	default:
	}
	if err := e.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("%w: kill pid %d: %w", ErrLaunch, e.cmd.Process.Pid, err)
	}
	<-e.exited
	return nil
}
