package vmsnap

import (
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"time"

	"github.com/vmsnap/vmsnap/qmp"
)

// loggingMonitor is a qmp.Monitor that logs the QMP traffic of the monitor
// it wraps at Debug level: each command with its arguments, reply and
// duration, and each event delivered to a subscriber. It changes nothing
// else: Close closes the wrapped monitor (vmsnap calls it only on monitors
// it opened).
type loggingMonitor struct {
	mon qmp.Monitor
	log *slog.Logger
}

// loggingFileMonitor is a loggingMonitor over a monitor that can pass file
// descriptors; it keeps that capability.
type loggingFileMonitor struct {
	loggingMonitor
	fs qmp.FileSender
}

var (
	_ qmp.Monitor    = (*loggingMonitor)(nil)
	_ qmp.FileSender = (*loggingFileMonitor)(nil)
)

// logMonitor returns mon wrapped to log its QMP traffic to log at Debug
// level, or mon itself when log is nil. The wrapper keeps mon's optional
// qmp.FileSender capability.
// UnwrapMonitor returns the monitor m logs for (see qmp.PeerPID).
func (m *loggingMonitor) UnwrapMonitor() qmp.Monitor { return m.mon }

func logMonitor(mon qmp.Monitor, log *slog.Logger) qmp.Monitor {
	if log == nil || mon == nil {
		return mon
	}
	if _, ok := mon.(*loggingMonitor); ok {
		return mon
	}
	if _, ok := mon.(*loggingFileMonitor); ok {
		return mon
	}
	lm := loggingMonitor{mon: mon, log: log}
	if fs, ok := mon.(qmp.FileSender); ok {
		return &loggingFileMonitor{loggingMonitor: lm, fs: fs}
	}
	return &lm
}

// unwrapMonitor returns the monitor logMonitor wrapped (mon itself when it
// is not a wrapper): the caller's own monitor, for Domain.Monitor.
func unwrapMonitor(mon qmp.Monitor) qmp.Monitor {
	switch m := mon.(type) {
	case *loggingMonitor:
		return m.mon
	case *loggingFileMonitor:
		return m.mon
	}
	return mon
}

// Execute runs the command on the wrapped monitor and logs it.
func (m *loggingMonitor) Execute(ctx context.Context, command string, args, result any) error {
	t0 := time.Now()
	err := m.mon.Execute(ctx, command, args, result)
	m.logCommand(ctx, command, args, result, 0, t0, err)
	return err
}

// ExecuteWithFiles runs the command with files on the wrapped monitor and
// logs it.
func (m *loggingFileMonitor) ExecuteWithFiles(ctx context.Context, command string, args, result any, files ...*os.File) error {
	t0 := time.Now()
	err := m.fs.ExecuteWithFiles(ctx, command, args, result, files...)
	m.logCommand(ctx, command, args, result, len(files), t0, err)
	return err
}

func (m *loggingMonitor) logCommand(ctx context.Context, command string, args, result any, files int, t0 time.Time, err error) {
	if !m.log.Enabled(ctx, slog.LevelDebug) {
		return
	}
	attrs := []slog.Attr{slog.String("command", command), slog.Duration("took", time.Since(t0))}
	if args != nil {
		attrs = append(attrs, slog.String("arguments", jsonText(args)))
	}
	if files > 0 {
		attrs = append(attrs, slog.Int("files", files))
	}
	if err != nil {
		attrs = append(attrs, slog.String("error", err.Error()))
	} else if result != nil {
		attrs = append(attrs, slog.String("return", jsonText(result)))
	}
	m.log.LogAttrs(ctx, slog.LevelDebug, "qmp: command", attrs...)
}

// Subscribe subscribes to the wrapped monitor's events; when Debug logging
// is enabled each event is logged as it is handed on.
func (m *loggingMonitor) Subscribe(ctx context.Context) (<-chan qmp.Event, error) {
	ch, err := m.mon.Subscribe(ctx)
	if err != nil || !m.log.Enabled(ctx, slog.LevelDebug) {
		return ch, err
	}
	out := make(chan qmp.Event)
	go func() {
		defer close(out)
		for ev := range ch {
			attrs := []slog.Attr{slog.String("event", ev.Name), slog.Time("qemu_time", ev.Time)}
			if len(ev.Data) > 0 {
				attrs = append(attrs, slog.String("data", string(ev.Data)))
			}
			m.log.LogAttrs(ctx, slog.LevelDebug, "qmp: event", attrs...)
			select {
			case out <- ev:
			case <-ctx.Done():
				// The subscriber is gone; drain until the wrapped
				// monitor closes the channel.
				for range ch {
				}
				return
			}
		}
	}()
	return out, nil
}

// Close closes the wrapped monitor.
func (m *loggingMonitor) Close() error { return m.mon.Close() }

// jsonText renders v for the log: its JSON, or the marshalling error.
func jsonText(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		return "<" + err.Error() + ">"
	}
	return string(b)
}
