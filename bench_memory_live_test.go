//go:build linux

package vmsnap_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmsnap/vmsnap/internal/migrate"
	"github.com/vmsnap/vmsnap/internal/qemutest"
)

// BenchmarkMemoryLivePause: the guest pause of a live memory save
// (migrate.Save, the mode the engine picks: background-snapshot where QEMU
// and the host have it, else pre-copy; the default format), measured from
// QEMU's STOP and RESUME events (Result.Downtime), for a 256 MiB guest
// holding 128 MiB of random data, on the system QEMU and the one
// qemutest.DirEnv names (run once more with DirEnv naming 5.2 for its
// pre-copy). The goal is a pause ≤ 15 ms. It also saves the same guest
// live with pre-copy in each format and reports the file sizes: the
// counter guest dirties one page, so a stream outgrows the data only by
// what pre-copy rewrote.
func BenchmarkMemoryLivePause(b *testing.B) {
	qemutest.Require(b)
	for _, q := range memQEMUs() {
		b.Run(q.name, func(b *testing.B) {
			b.Setenv(qemutest.DirEnv, q.dir)
			dir := b.TempDir()
			vm, feat, _ := memStartVM(b, dir, 256, 128)
			ctx := context.Background()
			mode := migrate.Precopy
			if ok, err := migrate.BackgroundSupported(ctx, vm.Mon, feat); err != nil {
				b.Fatal(err)
			} else if ok {
				mode = migrate.Background
			}
			var pauses []time.Duration
			var total time.Duration
			for i := 0; b.Loop(); i++ {
				path := filepath.Join(dir, fmt.Sprintf("live-%d", i))
				res, err := migrate.Save(ctx, vm.Mon, feat, path, mode, "", nil, nil)
				if err != nil {
					b.Fatalf("%v\n%s", err, vm.Output())
				}
				pauses = append(pauses, res.Downtime)
				total += res.Downtime
				os.Remove(path)
			}
			worst := time.Duration(0)
			for _, p := range pauses {
				worst = max(worst, p)
			}
			b.ReportMetric(float64(total.Microseconds())/float64(len(pauses))/1000, "pause-ms")
			b.ReportMetric(float64(worst.Microseconds())/1000, "worst-pause-ms")
			msg := fmt.Sprintf("QEMU %s %v: pauses %v", feat.Version, mode, pauses)
			for _, f := range []migrate.Format{migrate.FormatStream, migrate.FormatMappedRAM} {
				if migrate.CanSave(feat, migrate.Precopy, f) != nil {
					continue
				}
				path := filepath.Join(dir, "precopy-"+string(f))
				res, err := migrate.Save(ctx, vm.Mon, feat, path, migrate.Precopy, f, nil, nil)
				if err != nil {
					b.Fatalf("%v\n%s", err, vm.Output())
				}
				var st unix.Stat_t
				if err := unix.Stat(path, &st); err != nil {
					b.Fatal(err)
				}
				blocks := st.Blocks * 512
				b.ReportMetric(float64(res.Bytes)/(1<<20), "precopy-"+string(f)+"-MiB")
				msg += fmt.Sprintf("\n  pre-copy %s: file %d MiB (%d MiB allocated), pause %v", f, res.Bytes>>20, blocks>>20, res.Downtime)
				os.Remove(path)
			}
			b.Log(msg)
		})
	}
}
