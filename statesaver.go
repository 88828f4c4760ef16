package vmsnap

import (
	"context"
	"fmt"

	"github.com/vmsnap/vmsnap/internal/migrate"
)

// migrationSaver is the default StateSaver: a QEMU migration stream to a
// descriptor passed over the monitor (internal/migrate), stopped or live
// (background-snapshot where QEMU and the host support it, else pre-copy).
type migrationSaver struct{ d *Domain }

func (m migrationSaver) SaveState(ctx context.Context, req SaveStateRequest) (SaveStateResult, error) {
	mode := migrate.Stopped
	if req.Live {
		mode = m.d.liveMode(ctx)
	}
	// Streams by default: QEMU 10.0.2 crashed (segfault) in about one of
	// five cancelled mapped-ram saves, and a cancel or a crashed process's
	// settling must never kill the guest. Options.MappedRAM opts in.
	format := migrate.FormatStream
	if m.d.opts.MappedRAM {
		format = migrate.DefaultFormat(m.d.features, mode)
	}
	res, err := migrate.Save(ctx, req.Monitor, m.d.features, req.Path, mode, format, req.Progress, req.AtStop)
	return SaveStateResult{Downtime: res.Downtime, Bytes: res.Bytes, Format: string(res.Format)}, err
}

func (m migrationSaver) LoadState(ctx context.Context, req LoadStateRequest) error {
	format, err := migrate.ParseFormat(req.Format)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrUnsupported, err)
	}
	return migrate.Load(ctx, req.Monitor, req.Path, format, req.Progress)
}

// canLoad reports, before anything is stopped, whether the QEMU the
// domain runs can load a state file of format (the new QEMU of a relaunch
// runs the same binary).
func (m migrationSaver) canLoad(format string) error {
	return migrate.CanLoad(m.d.features, migrate.Format(format))
}

// stateSaver returns the StateSaver of the domain.
func (d *Domain) stateSaver() StateSaver {
	if d.opts.StateSaver != nil {
		return d.opts.StateSaver
	}
	return migrationSaver{d}
}

// customStateSaver reports whether the caller supplied the StateSaver.
func (d *Domain) customStateSaver() bool { return d.opts.StateSaver != nil }
