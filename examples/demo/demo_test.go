package main

import (
	"bytes"
	"context"
	"os"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/vmsnap/vmsnap/internal/qemutest"
)

// counters extracts the three counter lines of the demo's output.
func counters(t *testing.T, out string) (before, after, reverted uint64) {
	t.Helper()
	get := func(label string) uint64 {
		m := regexp.MustCompile(`(?m)^    counter ` + label + `: (\d+)`).FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("no %q line in:\n%s", label, out)
		}
		n, err := strconv.ParseUint(m[1], 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	return get("before snapshot"), get("after running on"), get("after revert")
}

func TestDemo(t *testing.T) {
	tests := []struct {
		name    string
		noQEMU  bool
		heading string
	}{
		{name: "real QEMU", heading: `^QEMU \d+\.\d+\.\d+ \(pid \d+\): a throwaway VM`},
		{name: "no QEMU on PATH", noQEMU: true, heading: `^qemu-system-x86_64 not found: running against the built-in fake QEMU`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.noQEMU {
				t.Setenv("PATH", t.TempDir())
			} else {
				qemutest.Require(t)
			}
			tmp := t.TempDir()
			t.Setenv("TMPDIR", tmp) // the demo's directory goes here; check it is removed
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			var out bytes.Buffer
			if err := run(ctx, &out); err != nil {
				t.Fatalf("run: %v\noutput:\n%s", err, out.String())
			}
			t.Logf("output:\n%s", out.String())
			text := out.String()
			if !regexp.MustCompile(tt.heading).MatchString(text) {
				t.Errorf("first line does not say what runs:\n%s", text)
			}
			before, after, reverted := counters(t, text)
			if !(before <= reverted && reverted < after) {
				t.Errorf("counter: %d at the snapshot, %d after running on, %d after revert: want it to go back to the snapshot's value", before, after, reverted)
			}
			for _, step := range []string{`full snapshot "before"`, `disk-only snapshot "disks"`, `external snapshot "external"`, `live external snapshot "live"`, `list the snapshots as a tree`, `revert to "before"`, `delete "before"`} {
				if !regexp.MustCompile(`(?m)^ ?\d+\. ` + regexp.QuoteMeta(step) + `.*\d+(\.\d+)?(µs|ms|s)\b`).MatchString(text) {
					t.Errorf("no timed step %q in output", step)
				}
			}
			if !regexp.MustCompile(`(?m)^      before \(running\).*\n        disks \(disk-only\)`).MatchString(text) {
				t.Errorf("tree does not show disks under before:\n%s", text)
			}
			left, err := os.ReadDir(tmp)
			if err != nil {
				t.Fatal(err)
			}
			if len(left) != 0 {
				t.Errorf("the demo left %d entries in TMPDIR: %v", len(left), left[0].Name())
			}
		})
	}
}
