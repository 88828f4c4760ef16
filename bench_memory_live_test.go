//go:build linux

package vmsnap_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmsnap/vmsnap"
	"github.com/vmsnap/vmsnap/internal/migrate"
	"github.com/vmsnap/vmsnap/internal/qemutest"
	"github.com/vmsnap/vmsnap/qmp"
	"github.com/vmsnap/vmsnap/store"
)

// BenchmarkMemoryLivePause: the guest pause of the library's live full
// external snapshot (Domain.Create with External|Live: the guest stopped,
// the two disks snapped in one transaction, the memory saved with a
// background-snapshot migration and the guest resumed as soon as QEMU has
// write-protected its memory; pre-copy where QEMU has no
// background-snapshot, as 5.2), measured from QEMU's own STOP and RESUME
// event timestamps, for a 256 MiB guest holding 128 MiB of random data, on
// the system QEMU and the one qemutest.DirEnv names. The goal is a pause
// ≤ 15 ms on every version. Each iteration creates one snapshot and
// deletes it (untimed).
//
// It reports the mean, median and worst pause and the first one (the
// first snapshot of a QEMU process is special: QEMU's background snapshot
// reads every page of guest RAM while the guest is stopped, which is
// cheap while the RAM is in transparent huge pages, and its write
// protection splits them, so later snapshots find 4 KiB pages until the
// kernel merges them again). It logs per iteration where the pause went:
// each step of the save (migrate.WithTrace) and QEMU's MIGRATION events,
// in ms after the STOP event, and how much of QEMU's memory was in huge
// pages before the create.
//
//	go test -v -run '^$' -bench BenchmarkMemoryLivePause -benchtime 10x -count 3 .
//	VMSNAP_QEMU_DIR=/var/cache/vmsnap-qemu/qemu-10.0 go test -run '^$' -bench BenchmarkMemoryLivePause/qemu -benchtime 10x .
func BenchmarkMemoryLivePause(b *testing.B) {
	qemutest.Require(b)
	for _, q := range memQEMUs() {
		b.Run(q.name, func(b *testing.B) {
			b.Setenv(qemutest.DirEnv, q.dir)
			dir := b.TempDir()
			data := filepath.Join(dir, "data.bin")
			qemutest.WriteRandom(b, data, 128<<20)
			vm := qemutest.Start(b, qemutest.Options{Disks: 2, MemoryMiB: 256, DiskSize: "512M", Dir: dir, Loaders: []qemutest.Loader{{File: data, Addr: memDataAddr}}})
			fs, err := store.NewFileStore(filepath.Join(dir, "store"))
			if err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			dom, err := vmsnap.Open(ctx, vm.Mon, vmsnap.Options{Store: fs})
			if err != nil {
				b.Fatal(err)
			}
			feat := memProbe(b, vm)
			mode := migrate.Precopy
			if ok, err := migrate.BackgroundSupported(ctx, vm.Mon, feat); err != nil {
				b.Fatal(err)
			} else if ok {
				mode = migrate.Background
			}
			events, err := vm.Mon.Subscribe(ctx)
			if err != nil {
				b.Fatal(err)
			}
			var (
				pauses []time.Duration
				lines  []string
			)
			for i := 0; b.Loop(); i++ {
				name := fmt.Sprintf("live-%d", i)
				tr := &pauseTrace{}
				huge := anonHugeMiB(vm.Pid)
				_, err := dom.Create(migrate.WithTrace(ctx, tr.step), vmsnap.CreateSpec{Name: name}, vmsnap.External|vmsnap.Live).Wait(ctx)
				if err != nil {
					b.Fatalf("%v\n%s", err, vm.Output())
				}
				pause, line := tr.pause(b, events)
				pauses = append(pauses, pause)
				lines = append(lines, fmt.Sprintf("%s (huge pages %d MiB)", line, huge))
				b.StopTimer()
				if _, err := dom.Delete(ctx, name, 0).Wait(ctx); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
			mean, median, worst := pauseStats(pauses)
			b.ReportMetric(ms(mean), "pause-ms")
			b.ReportMetric(ms(median), "median-pause-ms")
			b.ReportMetric(ms(worst), "worst-pause-ms")
			b.ReportMetric(ms(pauses[0]), "first-pause-ms")
			all := make([]string, len(pauses))
			for i, p := range pauses {
				all[i] = fmt.Sprintf("%.1f", ms(p))
			}
			b.Logf("QEMU %s, live external create (%s): pause mean %.1f ms, median %.1f ms, max %.1f ms (QEMU's STOP to RESUME)\n  pauses ms: %s\n  steps in ms after STOP (go test -v shows every line):\n  %s",
				feat.Version, mode, ms(mean), ms(median), ms(worst), strings.Join(all, " "), strings.Join(lines, "\n  "))
		})
	}
}

// pauseTrace collects one save's steps (migrate.WithTrace).
type pauseTrace struct {
	mu    sync.Mutex
	steps []tracedStep
}

type tracedStep struct {
	name string
	at   time.Time
}

func (p *pauseTrace) step(s migrate.Step, at time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.steps = append(p.steps, tracedStep{string(s), at})
}

// pause reads the events one create caused (they are queued: the create
// has returned) and returns the pause from QEMU's STOP to RESUME events and
// a line placing each step and MIGRATION event after the STOP.
func (p *pauseTrace) pause(b *testing.B, events <-chan qmp.Event) (time.Duration, string) {
	b.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	var stop, resume time.Time
	all := slices.Clone(p.steps)
	for resume.IsZero() {
		select {
		case ev := <-events:
			switch ev.Name {
			case "STOP":
				stop = ev.Time
			case "RESUME":
				if !stop.IsZero() {
					resume = ev.Time
				}
			case "MIGRATION":
				var d struct {
					Status string `json:"status"`
				}
				_ = ev.DecodeData(&d)
				all = append(all, tracedStep{"ev:" + d.Status, ev.Time})
			}
		case <-time.After(5 * time.Second):
			b.Fatalf("no STOP and RESUME events for the create (steps %v)", p.steps)
		}
	}
	// The completed event may come after the RESUME: take what is queued.
	for drained := false; !drained; {
		select {
		case ev := <-events:
			if ev.Name == "MIGRATION" {
				var d struct {
					Status string `json:"status"`
				}
				_ = ev.DecodeData(&d)
				all = append(all, tracedStep{"ev:" + d.Status, ev.Time})
			}
		default:
			drained = true
		}
	}
	slices.SortStableFunc(all, func(a, c tracedStep) int { return a.at.Compare(c.at) })
	var sb strings.Builder
	fmt.Fprintf(&sb, "pause %5.1f:", ms(resume.Sub(stop)))
	for _, s := range all {
		if s.name == string(migrate.StepGuestStopped) || s.name == string(migrate.StepResumed) {
			continue // STOP and RESUME are the ends of the pause
		}
		if d := s.at.Sub(stop); d >= -20*time.Millisecond && s.at.Sub(resume) <= 20*time.Millisecond {
			fmt.Fprintf(&sb, " %s %+.1f", s.name, ms(d))
		}
	}
	return resume.Sub(stop), sb.String()
}

func pauseStats(pauses []time.Duration) (mean, median, worst time.Duration) {
	if len(pauses) == 0 {
		return 0, 0, 0
	}
	var total time.Duration
	for _, p := range pauses {
		total += p
		worst = max(worst, p)
	}
	sorted := slices.Sorted(slices.Values(pauses))
	return total / time.Duration(len(pauses)), sorted[len(sorted)/2], worst
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// anonHugeMiB returns how much of process pid's anonymous memory is in
// transparent huge pages, in MiB (-1 when it cannot be read).
func anonHugeMiB(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return -1
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) == 3 && f[0] == "AnonHugePages:" {
			if kb, err := strconv.Atoi(f[1]); err == nil {
				return kb >> 10
			}
		}
	}
	return -1
}

// BenchmarkMemoryPrecopyFileSize saves the 256 MiB guest holding 128 MiB
// of random data live with pre-copy (migrate.Save) in each format this
// QEMU writes and reports the file sizes: the counter guest dirties one
// page, so a stream outgrows the data only by what pre-copy rewrote, and a
// mapped-ram file has the RAM's apparent size with only the data
// allocated.
func BenchmarkMemoryPrecopyFileSize(b *testing.B) {
	qemutest.Require(b)
	for _, q := range memQEMUs() {
		b.Run(q.name, func(b *testing.B) {
			b.Setenv(qemutest.DirEnv, q.dir)
			dir := b.TempDir()
			vm, feat, _ := memStartVM(b, dir, 256, 128)
			ctx := context.Background()
			msg := fmt.Sprintf("QEMU %s", feat.Version)
			for b.Loop() {
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
			}
			b.Log(msg)
		})
	}
}
