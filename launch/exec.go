// Package launch starts QEMU processes for vmsnap.
//
// vmsnap never guesses a QEMU command line: reverting an external snapshot
// needs a new QEMU process, and the caller says how to start it by
// supplying a vmsnap.Launcher. Exec is a Launcher that runs a fixed argv
// (the domain's own command line), with the disks' top images substituted
// as each relaunch asks, and connects to the QMP unix socket that argv
// serves.
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
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vmsnap/vmsnap"
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
	// with QEMU's ",," escaping of commas).
	DiskFiles map[string]string
	// Pid is the running QEMU's process id, when this Exec did not start
	// it; Stop waits for it to exit after quit. Zero means unknown:
	// Stop then waits until Socket stops accepting connections.
	Pid int
	// Stdout and Stderr receive the new process's output; nil means a
	// private file that Start reads to explain a process that died
	// before its monitor answered, and unlinks afterwards.
	Stdout, Stderr io.Writer
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
// closes it, and waits until the old process is gone: the process this
// Exec started, else the one Pid names, else until Socket stops accepting
// connections. It never kills a process it did not start.
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
	base, files, err := e.plan(spec)
	if err != nil {
		return nil, err
	}
	return e.startPlanned(ctx, base, files, spec.ExtraArgs)
}

// CheckLaunch implements vmsnap.LaunchChecker: it reports whether Start
// could carry out spec — a complete command line serving Socket, and every
// disk of spec known in DiskFiles with a non-empty new image — without
// starting or stopping anything.
func (e *Exec) CheckLaunch(ctx context.Context, spec vmsnap.LaunchSpec) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	_, _, err := e.plan(spec)
	return err
}

// Relaunch is Stop followed by Start, with the command line checked and
// the disks substituted before old is told to quit, so a refusal leaves
// the domain running.
func (e *Exec) Relaunch(ctx context.Context, old qmp.Monitor, spec vmsnap.LaunchSpec) (qmp.Monitor, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	base, files, err := e.plan(spec)
	if err != nil {
		return nil, err
	}
	if err := e.stopOld(ctx, old); err != nil {
		return nil, err
	}
	return e.startPlanned(ctx, base, files, spec.ExtraArgs)
}

// plan checks e and returns the command line and disk files with
// spec.Disks substituted.
func (e *Exec) plan(spec vmsnap.LaunchSpec) (base []string, files map[string]string, err error) {
	if err := e.check(); err != nil {
		return nil, nil, err
	}
	replace := map[string]string{}
	files = map[string]string{}
	for dev, f := range e.DiskFiles {
		files[dev] = f
	}
	for _, d := range spec.Disks {
		key := d.Device
		cur, ok := e.DiskFiles[key]
		if !ok && d.Node != "" {
			key = d.Node
			cur, ok = e.DiskFiles[key]
		}
		if !ok {
			return nil, nil, fmt.Errorf("%w: disk %s: not in DiskFiles, so its image cannot be replaced by %s in the command line", ErrLaunch, diskName(d), d.File)
		}
		if d.File == "" {
			return nil, nil, fmt.Errorf("%w: disk %s: empty image path", ErrLaunch, diskName(d))
		}
		if prev, dup := replace[cur]; dup && prev != d.File {
			return nil, nil, fmt.Errorf("%w: disk %s: image %s asked to become both %s and %s", ErrLaunch, diskName(d), cur, prev, d.File)
		}
		replace[cur] = d.File
		files[key] = d.File
	}
	base, _ = replacePath(e.Argv, replace)
	return base, files, nil
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
		err := old.Execute(wctx, "quit", nil, nil)
		old.Close()
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
	var logf *os.File
	if e.Stdout == nil && e.Stderr == nil {
		f, err := os.CreateTemp("", "vmsnap-launch-*.log")
		if err != nil {
			return nil, fmt.Errorf("%w: output file: %w", ErrLaunch, err)
		}
		logf = f
		defer func() {
			os.Remove(f.Name())
			f.Close()
		}()
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
				if b, rerr := os.ReadFile(logf.Name()); rerr == nil && len(b) > 0 {
					msg = ": " + strings.TrimSpace(lastBytes(b, 2048))
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
