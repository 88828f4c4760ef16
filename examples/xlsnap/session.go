package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/vmsnap/vmsnap"
	"github.com/vmsnap/vmsnap/launch"
	"github.com/vmsnap/vmsnap/qga"
	"github.com/vmsnap/vmsnap/qmp"
	"github.com/vmsnap/vmsnap/store"
)

// session is one domain opened for one command.
type session struct {
	mon      qmp.Monitor
	dom      *vmsnap.Domain
	launcher *launch.Exec // nil without --launch-cmd/--launch-config
	agent    *qga.Agent   // nil unless the command quiesces
}

func (s *session) close() {
	// The domain's monitor may have been replaced by a relaunch.
	if m := s.dom.Monitor(); m != nil && m != s.mon {
		m.Close()
	}
	s.mon.Close()
	if s.agent != nil {
		s.agent.Close()
	}
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

// open connects to the domain's monitor first and only then opens the
// store (the library's lock order: monitor first, store lock second).
// With withAgent it first connects to the guest agent at --agent.
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
		return nil, fmt.Errorf("domain %s: connect to the monitor: %w", domain, err)
	}
	s := &session{mon: mon, agent: agent}
	defer func() {
		if !ok {
			mon.Close()
		}
	}()
	fs, err := store.NewFileStore(g.store)
	if err != nil {
		return nil, fmt.Errorf("domain %s: %w", domain, err)
	}
	opts := vmsnap.Options{UUID: g.uuid, Store: fs}
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
	s.dom = dom
	ok = true
	return s, nil
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
