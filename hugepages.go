package vmsnap

import (
	"context"
	"log/slog"
	"time"

	"github.com/vmsnap/vmsnap/internal/qemu"
	"github.com/vmsnap/vmsnap/internal/thp"
	"github.com/vmsnap/vmsnap/qmp"
)

// prepareGuestRAM readies the guest RAM of the QEMU at the other end of
// the monitor for a background snapshot's pause (see internal/thp): it
// puts it back in huge pages (an earlier background snapshot split them,
// and QEMU then reads 4 KiB pages while the guest is stopped, tripling the
// pause), then faults in the pages the guest never touched (QEMU's first
// background snapshot reads them in the pause, and a first touch can be
// slow: 230–480 ms of a 256 MiB guest's first pause on this project's
// machines). It is best effort: a monitor that does not tell QEMU's pid
// (TCP, go-qemu, libvirt) leaves the RAM as it is; a kernel before 6.1 or
// a caller without CAP_SYS_NICE skips the collapse, a caller that may not
// read QEMU's memory the prefault. It runs while the guest runs, not in
// the pause, and does not watch ctx: the prefault of a large guest's
// untouched RAM can take seconds.
func (d *Domain) prepareGuestRAM(ctx context.Context) {
	pid, ok := qmp.PeerPID(d.mon)
	if !ok {
		return
	}
	size, err := qemu.GuestRAM(ctx, d.mon)
	if err != nil || size == 0 {
		return
	}
	t0 := time.Now()
	res, err := thp.Collapse(pid, size)
	d.logRAMStep(ctx, "vmsnap: guest RAM back in huge pages", t0, err, slog.Int("pid", pid), slog.Int("blocks", res.Blocks), slog.Int("failed", res.Failed))
	t0 = time.Now()
	pages, err := thp.Prefault(pid, size)
	d.logRAMStep(ctx, "vmsnap: guest RAM present", t0, err, slog.Int("pid", pid), slog.Int("pages", pages))
}

// logRAMStep logs one step of prepareGuestRAM at Debug level: attrs, the
// time since t0 and err, if any.
func (d *Domain) logRAMStep(ctx context.Context, msg string, t0 time.Time, err error, attrs ...slog.Attr) {
	log := d.opts.Logger
	if log == nil {
		return
	}
	attrs = append(attrs, slog.Duration("took", time.Since(t0)))
	if err != nil {
		attrs = append(attrs, slog.String("error", err.Error()))
	}
	log.LogAttrs(ctx, slog.LevelDebug, msg, attrs...)
}
