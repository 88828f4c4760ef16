package enginetest

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"sync"

	"github.com/vmsnap/vmsnap"
	"github.com/vmsnap/vmsnap/qmp"
)

// SnapshotJobCommands are the QMP commands QEMU 6.0 added for internal
// snapshots of the whole VM; older QEMU has only HMP savevm, loadvm and
// delvm.
var SnapshotJobCommands = []string{"snapshot-save", "snapshot-load", "snapshot-delete"}

// commandLog is what a target's QEMU received from the engine, shared by
// every monitor the engine was given (the first one, and those a Launcher
// returned).
type commandLog struct {
	mu   sync.Mutex
	sent []string
}

func (l *commandLog) add(cmd string, args any) {
	entry := cmd
	if cmd == "human-monitor-command" {
		entry = "hmp:" + hmpLine(args)
	}
	l.mu.Lock()
	l.sent = append(l.sent, entry)
	l.mu.Unlock()
}

func (l *commandLog) list() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.sent)
}

// hmpLine returns the command line of human-monitor-command's arguments.
func hmpLine(args any) string {
	b, err := json.Marshal(args)
	if err != nil {
		return fmt.Sprintf("(unreadable arguments: %v)", err)
	}
	var a struct {
		Line string `json:"command-line"`
	}
	if err := json.Unmarshal(b, &a); err != nil {
		return fmt.Sprintf("(unreadable arguments: %v)", err)
	}
	return a.Line
}

// monitor is the qmp.Monitor the engine gets from a real target: it logs
// every command and, with hideJobs, makes QEMU look older than 6.0:
// query-commands does not list the snapshot jobs and calling one fails as
// QEMU 5.2 would. It passes file descriptors through (qmp.FileSender).
type monitor struct {
	qmp.Monitor
	log      *commandLog
	hideJobs bool
}

var (
	_ qmp.Monitor    = (*monitor)(nil)
	_ qmp.FileSender = (*monitor)(nil)
)

// Execute implements qmp.Monitor.
func (m *monitor) Execute(ctx context.Context, cmd string, args, result any) error {
	if m.hideJobs && slices.Contains(SnapshotJobCommands, cmd) {
		return &qmp.Error{Command: cmd, Class: "CommandNotFound", Desc: "The command " + cmd + " has not been found"}
	}
	m.log.add(cmd, args)
	if cmd != "query-commands" || !m.hideJobs {
		return m.Monitor.Execute(ctx, cmd, args, result)
	}
	var all []map[string]any
	if err := m.Monitor.Execute(ctx, cmd, args, &all); err != nil {
		return err
	}
	kept := all[:0]
	for _, c := range all {
		if name, _ := c["name"].(string); !slices.Contains(SnapshotJobCommands, name) {
			kept = append(kept, c)
		}
	}
	if result == nil {
		return nil
	}
	b, err := json.Marshal(kept)
	if err != nil {
		return fmt.Errorf("enginetest: query-commands: %w", err)
	}
	return json.Unmarshal(b, result)
}

// ExecuteWithFiles implements qmp.FileSender when the wrapped monitor does.
func (m *monitor) ExecuteWithFiles(ctx context.Context, cmd string, args, result any, files ...*os.File) error {
	fs, ok := m.Monitor.(qmp.FileSender)
	if !ok {
		return fmt.Errorf("enginetest: %s: the monitor cannot pass file descriptors", cmd)
	}
	if m.hideJobs && slices.Contains(SnapshotJobCommands, cmd) {
		return &qmp.Error{Command: cmd, Class: "CommandNotFound", Desc: "The command " + cmd + " has not been found"}
	}
	m.log.add(cmd, args)
	return fs.ExecuteWithFiles(ctx, cmd, args, result, files...)
}

// launcher passes a real Launcher through, wrapping each monitor it
// returns like the first one and telling the target which QEMU runs now.
type launcher struct {
	inner   vmsnap.Launcher
	wrap    func(qmp.Monitor) qmp.Monitor
	started func(raw qmp.Monitor)
}

var (
	_ vmsnap.Launcher      = (*launcher)(nil)
	_ vmsnap.LaunchChecker = (*launcher)(nil)
)

// Stop implements vmsnap.Launcher.
func (l *launcher) Stop(ctx context.Context, old qmp.Monitor) error {
	if w, ok := old.(*monitor); ok {
		old = w.Monitor
	}
	return l.inner.Stop(ctx, old)
}

// Start implements vmsnap.Launcher.
func (l *launcher) Start(ctx context.Context, spec vmsnap.LaunchSpec) (qmp.Monitor, error) {
	m, err := l.inner.Start(ctx, spec)
	if err != nil {
		return nil, err
	}
	l.started(m)
	return l.wrap(m), nil
}

// CheckLaunch implements vmsnap.LaunchChecker when the wrapped Launcher
// does.
func (l *launcher) CheckLaunch(ctx context.Context, spec vmsnap.LaunchSpec) error {
	if c, ok := l.inner.(vmsnap.LaunchChecker); ok {
		return c.CheckLaunch(ctx, spec)
	}
	return nil
}
