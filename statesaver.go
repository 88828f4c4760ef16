package vmsnap

import (
	"context"

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
	res, err := migrate.Save(ctx, req.Monitor, m.d.features, req.Path, mode, req.Progress, req.AtStop)
	return SaveStateResult{Downtime: res.Downtime, Bytes: res.Bytes}, err
}

func (m migrationSaver) LoadState(ctx context.Context, req LoadStateRequest) error {
	return migrate.Load(ctx, req.Monitor, req.Path, req.Progress)
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
