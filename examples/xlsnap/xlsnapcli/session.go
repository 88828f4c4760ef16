package xlsnapcli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"github.com/vmsnap/vmsnap"
	"github.com/vmsnap/vmsnap/launch"
	"github.com/vmsnap/vmsnap/qga"
	"github.com/vmsnap/vmsnap/qmp"
	"github.com/vmsnap/vmsnap/store"
)

// session is one domain opened for one command.
type session struct {
	mon        qmp.Monitor // nil when the domain was bound while its QEMU was down
	dom        *vmsnap.Domain
	store      store.Store
	closeStore func() error
	launcher   *launch.Exec // nil without --launch-cmd/--launch-config
	agent      *qga.Agent   // nil unless the command quiesces
}

func (s *session) close() {
	// The domain's monitor may have been replaced by a relaunch.
	if m := s.dom.Monitor(); m != nil && m != s.mon {
		m.Close()
	}
	if s.mon != nil {
		s.mon.Close()
	}
	if s.agent != nil {
		s.agent.Close()
	}
	s.closeStore()
}

// launchArgv returns the command line given by --launch-cmd or
// --launch-config, nil when neither was given.
func (g *globals) launchArgv() ([]string, error) {
	switch {
	case g.launchCmd != "" && g.launchConfig != "":
		return nil, usagef("--launch-cmd and --launch-config exclude each other")
	case g.launchCmd != "":
		argv, err := launch.SplitCommandLine(g.launchCmd)
		if err != nil {
			return nil, usagef("--launch-cmd: %v", err)
		}
		if len(argv) == 0 {
			return nil, usagef("--launch-cmd: empty command line")
		}
		return argv, nil
	case g.launchConfig != "":
		return launch.ReadArgvFile(g.launchConfig)
	}
	return nil, nil
}

// monitorDown reports whether a dial error means that no QEMU serves the
// socket: nothing listens on it, or the socket file is missing.
func monitorDown(err error) bool {
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT)
}

// open connects to the domain's monitor first and only then opens the
// store (the library's lock order: monitor first, store lock second).
// With withAgent it first connects to the guest agent at --agent.
//
// When no QEMU serves DOMAIN and --launch-cmd/--launch-config and --uuid
// are given, the domain may be down because a revert that restarts QEMU
// was cut short: open binds it offline and reconciles, which finishes that
// revert and starts QEMU again; the command then goes on with the new
// monitor. With nothing to finish, the connection error stands.
func open(ctx context.Context, g *globals, domain string, withAgent bool) (*session, error) {
	if g.timeout <= 0 {
		return nil, usagef("--timeout must be positive, not %v", g.timeout)
	}
	argv, err := g.launchArgv()
	if err != nil {
		return nil, err
	}
	var agent *qga.Agent
	if withAgent {
		actx, cancel := context.WithTimeout(ctx, g.timeout)
		agent, err = qga.Dial(actx, g.agent)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("domain %s: %w", domain, err)
		}
	}
	ok := false
	defer func() {
		if !ok && agent != nil {
			agent.Close()
		}
	}()
	dctx, cancel := context.WithTimeout(ctx, g.timeout)
	mon, err := qmp.Dial(dctx, "unix:"+domain)
	cancel()
	if errors.Is(err, qmp.ErrMonitorInUse) {
		return nil, fmt.Errorf("domain %s: monitor in use by another client (waited %v)", domain, g.timeout)
	}
	if err != nil {
		dialErr := fmt.Errorf("domain %s: connect to the monitor: %w", domain, err)
		if !monitorDown(err) || argv == nil || g.uuid == "" {
			return nil, dialErr
		}
		s, err := openDown(ctx, g, domain, argv, agent, dialErr)
		if err != nil {
			return nil, err
		}
		ok = true
		return s, nil
	}
	s := &session{mon: mon, agent: agent}
	defer func() {
		if !ok {
			mon.Close()
		}
	}()
	st, closeStore, err := g.cfg.openStore(ctx, g.store)
	if err != nil {
		return nil, fmt.Errorf("domain %s: %w", domain, err)
	}
	s.store, s.closeStore = st, closeStore
	defer func() {
		if !ok {
			closeStore()
		}
	}()
	opts := vmsnap.Options{UUID: g.uuid, Store: st, MemoryDir: g.memoryDir}
	if agent != nil {
		opts.Agent = agent
	}
	if argv != nil {
		files, err := launch.DiskFiles(ctx, mon, argv)
		if err != nil {
			return nil, fmt.Errorf("domain %s: %w", domain, err)
		}
		s.launcher = &launch.Exec{Argv: argv, Socket: domain, DiskFiles: files, Pid: peerPid(mon, domain)}
		if err := s.launcher.Check(); err != nil {
			return nil, fmt.Errorf("domain %s: launch command: %w", domain, err)
		}
		opts.Launcher = s.launcher
	}
	dom, err := vmsnap.Open(ctx, mon, opts)
	if errors.Is(err, vmsnap.ErrInvalidDomain) && g.uuid == "" {
		return nil, fmt.Errorf("domain %s: QEMU was started without -uuid, so the domain has no UUID to key its snapshots by: give it with --uuid UUID", domain)
	}
	if err != nil {
		return nil, fmt.Errorf("domain %s: %w", domain, err)
	}
	if s.launcher != nil {
		if s.launcher.LogDir, err = g.domainDir(st, dom.UUID()); err != nil {
			return nil, fmt.Errorf("domain %s: %w", domain, err)
		}
	}
	s.dom = dom
	ok = true
	return s, nil
}

// openDown binds a domain whose QEMU is down (no monitor answers at
// DOMAIN) and reconciles it through the launch command: a revert that
// restarts QEMU and was cut short after the old QEMU stopped is finished
// (or rolled back onto the previous disks), and QEMU runs again. When
// nothing brings QEMU back, dialErr is returned (with the reconcile's
// error, if it had one).
func openDown(ctx context.Context, g *globals, domain string, argv []string, agent *qga.Agent, dialErr error) (*session, error) {
	st, closeStore, err := g.cfg.openStore(ctx, g.store)
	if err != nil {
		return nil, fmt.Errorf("%w; open the store: %w", dialErr, err)
	}
	ok := false
	defer func() {
		if !ok {
			closeStore()
		}
	}()
	launcher := &launch.Exec{Argv: argv, Socket: domain}
	if err := launcher.Check(); err != nil {
		return nil, fmt.Errorf("%w; launch command: %w", dialErr, err)
	}
	if launcher.LogDir, err = g.domainDir(st, g.uuid); err != nil {
		return nil, fmt.Errorf("%w; %w", dialErr, err)
	}
	opts := vmsnap.Options{UUID: g.uuid, Store: st, Launcher: launcher, MemoryDir: g.memoryDir}
	if agent != nil {
		opts.Agent = agent
	}
	dom, err := vmsnap.OpenOffline(ctx, g.uuid, opts)
	if err != nil {
		return nil, fmt.Errorf("%w; %w", dialErr, err)
	}
	// Once QEMU runs again the command goes on: an intent Reconcile left
	// unsettled is reported by the command's own operation.
	if rerr := dom.Reconcile(ctx); dom.Monitor() == nil {
		if rerr != nil {
			return nil, fmt.Errorf("%w; reconcile: %w", dialErr, rerr)
		}
		return nil, dialErr
	}
	ok = true
	return &session{dom: dom, store: st, closeStore: closeStore, launcher: launcher, agent: agent}, nil
}

// domainDir returns the directory where xlsnap keeps the domain's own
// files that are not metadata (the launch log), creating it with mode
// 0700: the domain's directory in a file store, else the domain's
// directory under --memory-dir, else "" (a launch then logs to a temporary
// file it removes).
func (g *globals) domainDir(st store.Store, uuid string) (string, error) {
	var dir string
	switch fs, isFile := st.(*store.FileStore); {
	case isFile:
		d, err := fs.Dir(uuid)
		if err != nil {
			return "", err
		}
		dir = d
	case g.memoryDir != "":
		if err := store.ValidateDomain(uuid); err != nil {
			return "", err
		}
		dir = filepath.Join(g.memoryDir, uuid)
	default:
		return "", nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("domain directory for the launch log: %w", err)
	}
	return dir, nil
}

// wait waits for op; when ctx ends first (Ctrl-C) it cancels op and still
// waits for its rollback, so the program never exits mid-operation.
func wait[T any](ctx context.Context, op *vmsnap.Op[T]) (T, error) {
	select {
	case <-op.Done():
	case <-ctx.Done():
		op.Cancel()
		<-op.Done()
	}
	return op.Result()
}
