package vmsnap_test

import (
	"testing"
	"time"

	"github.com/vmsnap/vmsnap"
)

// progressSamples polls op's Progress until it is done and returns the
// samples taken in phase.
func progressSamples[T any](op *vmsnap.Op[T], phase vmsnap.Phase) []vmsnap.Progress {
	var out []vmsnap.Progress
	for {
		p := op.Progress()
		if p.Phase == phase && p.Total > 0 {
			out = append(out, p)
		}
		select {
		case <-op.Done():
			return out
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// The progress of a memory save never goes back, stays within its total,
// and says what it counts: bytes of a file (external), with the guest's
// RAM as total; a fraction of QEMU's snapshot job (internal).
func TestQEMUProgressOfSaves(t *testing.T) {
	l := loadedGuest(t, vmsnap.Options{})
	ctx := testCtx(t)
	const ram = 256 << 20
	for _, tc := range []struct {
		name     string
		flags    vmsnap.CreateFlags
		fraction bool
	}{
		{"external", vmsnap.External, false},
		{"internal", 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			op := l.dom.Create(ctx, vmsnap.CreateSpec{Name: "p-" + tc.name}, tc.flags)
			samples := progressSamples(op, vmsnap.PhaseSavingMemory)
			if _, err := op.Wait(ctx); err != nil {
				t.Fatal(err)
			}
			if len(samples) == 0 {
				if tc.fraction {
					// QEMU's monitor is busy while the internal save
					// runs (see Create): the job's progress may come
					// only with its end.
					t.Skip("QEMU reported no job progress while it saved")
				}
				t.Fatal("no progress reported while memory was saved")
			}
			prev := uint64(0)
			for _, p := range samples {
				if p.Bytes < prev {
					t.Errorf("progress went back: %d after %d", p.Bytes, prev)
				}
				prev = p.Bytes
				if p.Bytes > p.Total {
					t.Errorf("progress %d past its total %d", p.Bytes, p.Total)
				}
				if p.FractionOnly != tc.fraction {
					t.Errorf("FractionOnly = %v, want %v", p.FractionOnly, tc.fraction)
				}
				// QEMU's RAM total is the guest's RAM plus its small ROM
				// and firmware blocks.
				if !tc.fraction && (p.Total < ram || p.Total > ram+16<<20) {
					t.Errorf("total %d bytes, want the guest's RAM (%d) and its ROMs", p.Total, ram)
				}
			}
			t.Logf("%s: %d samples, last %d of %d", tc.name, len(samples), samples[len(samples)-1].Bytes, samples[len(samples)-1].Total)
		})
	}
}
