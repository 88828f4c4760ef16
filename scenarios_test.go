package vmsnap_test

import (
	"slices"
	"testing"

	"github.com/vmsnap/vmsnap/internal/enginetest"
	"github.com/vmsnap/vmsnap/internal/fakeqemu"
	"github.com/vmsnap/vmsnap/internal/qemutest"
)

// fakeSkips are the scenarios the fake cannot run: they need a Launcher
// that restarts QEMU, a shut-off domain's image files, or qcow2 images
// with backing chains.
var fakeSkips = []string{"internal-disk-only-relaunch", "internal-disk-only-offline", "external-disk-only"}

// The engine scenario suite against the fake QEMU: 7.2 with snapshot jobs
// and 5.2 with the HMP fallback. The fake has no image files and no
// process to relaunch, so the scenarios that need them are skipped (and
// listed); the real targets below run them.
func TestScenariosFake(t *testing.T) {
	for _, c := range []struct {
		name    string
		profile fakeqemu.Profile
	}{{"qemu-7.2-jobs", fakeqemu.QEMU72}, {"qemu-5.2-hmp", fakeqemu.QEMU52}} {
		t.Run(c.name, func(t *testing.T) {
			var got []string
			for _, s := range enginetest.Run(t, enginetest.NewFake(c.profile)) {
				got = append(got, s.Scenario)
			}
			if !slices.Equal(got, fakeSkips) {
				t.Errorf("the fake skipped %v, want exactly %v", got, fakeSkips)
			}
		})
	}
}

// The same suite against real QEMU, with snapshot jobs and with a monitor
// that hides them (the HMP fallback). Every scenario must run: a skipped
// capability fails the test. Without QEMU it skips, and fails under
// CI=true.
func TestScenariosQEMU(t *testing.T) {
	qemutest.Require(t)
	for _, c := range []struct {
		name string
		opts enginetest.QEMUOptions
	}{{"jobs", enginetest.QEMUOptions{}}, {"hmp-fallback", enginetest.QEMUOptions{HideSnapshotJobs: true}}} {
		t.Run(c.name, func(t *testing.T) {
			if skipped := enginetest.Run(t, enginetest.NewQEMU(c.opts)); len(skipped) != 0 {
				t.Errorf("the real QEMU target must support every capability; skipped %v", skipped)
			}
		})
	}
}
