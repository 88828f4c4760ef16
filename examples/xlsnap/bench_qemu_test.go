package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vmsnap/vmsnap/internal/qemutest"
)

// benchBuild builds xlsnap once per test binary for the benchmarks (the
// tests' buildXlsnap takes a *testing.T).
var benchBuild struct {
	sync.Once
	bin string
	out []byte
	err error
}

func buildXlsnapTB(tb testing.TB) string {
	tb.Helper()
	benchBuild.Do(func() {
		benchBuild.bin = filepath.Join(binDir, "xlsnap-bench")
		benchBuild.out, benchBuild.err = exec.Command("go", "build", "-o", benchBuild.bin, ".").CombinedOutput()
	})
	if benchBuild.err != nil {
		tb.Fatalf("go build: %v\n%s", benchBuild.err, benchBuild.out)
	}
	return benchBuild.bin
}

// BenchmarkXlsnapCreate compares a full internal snapshot taken by running
// the xlsnap program (process start, monitor connection, probe, lock,
// reconcile, intent, save, commit, exit) with the same snapshot-save sent
// raw on another QMP monitor of the same guest, interleaved in alternating
// order, each snapshot deleted outside the timing before the next is
// taken. The guest has 128 MiB of random data in RAM, so the save writes
// real memory, and an idle 64 MiB guest shows the fixed cost. The xlsnap
// binary is built once with go build. Besides the means it reports the
// medians of the per-iteration ratio and overhead (the machine is shared;
// a median is robust to a busy moment in one of the two runs).
func BenchmarkXlsnapCreate(b *testing.B) {
	qemutest.Require(b)
	b.Run("loaded-128MiB", func(b *testing.B) {
		blob := filepath.Join(b.TempDir(), "ram.bin")
		qemutest.WriteRandom(b, blob, 128<<20)
		benchXlsnapCreate(b, qemutest.Options{MemoryMiB: 256, DiskSize: "512M", Loaders: []qemutest.Loader{{File: blob, Addr: 0x1000000}}})
	})
	b.Run("idle-64MiB", func(b *testing.B) { benchXlsnapCreate(b, qemutest.Options{}) })
}

func benchXlsnapCreate(b *testing.B, opts qemutest.Options) {
	bin := buildXlsnapTB(b)
	dir, err := os.MkdirTemp("", "xlb")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	xlSock := filepath.Join(dir, "xl.sock")
	rawSock := filepath.Join(dir, "raw.sock")
	opts.ExtraArgs = append(opts.ExtraArgs,
		"-qmp", "unix:"+xlSock+",server=on,wait=off",
		"-qmp", "unix:"+rawSock+",server=on,wait=off")
	vm := qemutest.Start(b, opts)
	st := filepath.Join(dir, "store")
	raw := qemutest.DialRaw(b, rawSock)
	devices := []string{vm.Disks[0].Node, vm.Disks[1].Node}
	run := func(args ...string) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		out, err := exec.CommandContext(ctx, bin, append([]string{"--store", st}, args...)...).CombinedOutput()
		if err != nil {
			b.Fatalf("xlsnap %q: %v\n%s", args, err, out)
		}
	}
	// Each iteration times one raw snapshot and one taken by xlsnap, in
	// alternating order, each deleted outside the timing and the
	// filesystems synced after the delete, so that neither inherits the
	// writeback of the previous one (an fsync of a record can wait for it).
	rawSnapshot := func(i int) time.Duration {
		tag := fmt.Sprintf("raw%d", i)
		t0 := time.Now()
		raw.Job(b, "snapshot-save", "save-"+tag, map[string]any{"tag": tag, "vmstate": devices[0], "devices": devices})
		d := time.Since(t0)
		b.StopTimer()
		raw.Job(b, "snapshot-delete", "del-"+tag, map[string]any{"tag": tag, "devices": devices})
		syscall.Sync()
		b.StartTimer()
		return d
	}
	xlsnapSnapshot := func(i int) time.Duration {
		name := fmt.Sprintf("xl%d", i)
		t0 := time.Now()
		run("snapshot-create", "-n", name, xlSock)
		d := time.Since(t0)
		b.StopTimer()
		run("snapshot-delete", "-n", name, xlSock)
		syscall.Sync()
		b.StartTimer()
		return d
	}
	var rawTime, xlTime time.Duration
	var ratios, overheads []float64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		var r, x time.Duration
		if i%2 == 0 {
			r = rawSnapshot(i)
			x = xlsnapSnapshot(i)
		} else {
			x = xlsnapSnapshot(i)
			r = rawSnapshot(i)
		}
		rawTime += r
		xlTime += x
		ratios = append(ratios, float64(x)/float64(r))
		overheads = append(overheads, float64(x-r)/float64(time.Millisecond))
	}
	b.StopTimer()
	n := float64(b.N)
	b.ReportMetric(float64(rawTime)/float64(time.Millisecond)/n, "raw-ms/op")
	b.ReportMetric(float64(xlTime)/float64(time.Millisecond)/n, "xlsnap-ms/op")
	b.ReportMetric(float64(xlTime)/float64(rawTime), "xlsnap/raw")
	b.ReportMetric(qemutest.Median(ratios), "median-xlsnap/raw")
	b.ReportMetric(qemutest.Median(overheads), "median-overhead-ms")
}
