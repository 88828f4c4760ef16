package vmsnap

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	goqemuqmp "github.com/digitalocean/go-qemu/qmp"
	"github.com/google/go-cmp/cmp"

	"github.com/vmsnap/vmsnap/qmp"
)

var updatePlan = flag.Bool("update-plan", false, "rewrite testdata/plan.golden from the planner")

// envs returns every combination of what a domain can offer.
func envs() []env {
	var out []env
	for i := 0; i < 1<<8; i++ {
		e := env{online: i&1 != 0, jobs: i&2 != 0, fds: i&4 != 0, memoryDir: i&8 != 0, launcher: i&16 != 0, agent: i&32 != 0, saver: i&64 != 0, managed: i&128 != 0}
		if !e.online && (e.jobs || e.fds || e.managed) {
			continue // only a running QEMU has jobs or a monitor
		}
		out = append(out, e)
	}
	return out
}

func (e env) String() string {
	var parts []string
	for _, f := range []struct {
		set  bool
		name string
	}{{e.online, "online"}, {e.jobs, "jobs"}, {e.fds, "fds"}, {e.memoryDir, "memdir"}, {e.launcher, "launcher"}, {e.agent, "agent"}, {e.saver, "saver"}, {e.managed, "managed"}} {
		if f.set {
			parts = append(parts, f.name)
		}
	}
	if len(parts) == 0 {
		return "offline"
	}
	return strings.Join(parts, ",")
}

// outcome is how a plan or a refusal reads in the golden table.
func outcome(plan fmt.Stringer, err error) string {
	switch {
	case errors.Is(err, ErrInvalidFlags):
		return "invalid-flags"
	case errors.Is(err, ErrUnsupported):
		return "unsupported"
	case errors.Is(err, ErrRevertRisky):
		return "risky"
	case err != nil:
		return "error: " + err.Error()
	}
	return plan.String()
}

func (p createPlan) String() string {
	return fmt.Sprintf("%s offline=%t vmstate=%d live=%t quiesce=%t halt=%t record=%t", p.kind, p.offline, p.vmstate, p.live, p.quiesce, p.halt, p.record)
}

func (p revertPlan) String() string {
	return fmt.Sprintf("method=%d vmstate=%d running=%t prune=%t internal-disks=%t", p.method, p.vmstate, p.running, p.prune, p.internalDisks)
}

func (p deletePlan) String() string {
	return fmt.Sprintf("method=%d offline=%t vmstate=%d", p.method, p.offline, p.vmstate)
}

// planTable is the whole dispatch table: every flag combination of every
// operation, on every kind of domain, for every kind of record.
func planTable(t *testing.T) string {
	var b strings.Builder
	states := map[kind]State{kindInternalDiskOnly: StateDiskOnly, kindExternalDiskOnly: StateDiskOnly, kindInternalFull: StateRunning, kindExternalFull: StatePaused}
	for _, e := range envs() {
		for f := CreateFlags(0); f < 1<<len(createFlagNames); f++ {
			p, err := planCreate(f, e)
			checkCreateInvariants(t, f, e, p, err)
			fmt.Fprintf(&b, "create %-32s %-36s %s\n", f, e, outcome(p, err))
		}
		for k := kindInternalDiskOnly; k <= kindExternalFull; k++ {
			for f := RevertFlags(0); f < 1<<len(revertFlagNames); f++ {
				p, err := planRevert(k, states[k], f, e)
				checkRevertInvariants(t, k, f, e, p, err)
				fmt.Fprintf(&b, "revert %-18s %-32s %-36s %s\n", k, f, e, outcome(p, err))
			}
			for f := DeleteFlags(0); f < 1<<len(deleteFlagNames); f++ {
				p, err := planDelete(k, f, e)
				checkDeleteInvariants(t, k, f, e, p, err)
				fmt.Fprintf(&b, "delete %-18s %-32s %-36s %s\n", k, f, e, outcome(p, err))
			}
		}
	}
	return b.String()
}

// TestPlanTable checks every combination against the reviewed table in
// testdata/plan.golden (go test -run TestPlanTable -update-plan rewrites
// it), and every plan against the rules that must hold whatever the table
// says.
func TestPlanTable(t *testing.T) {
	got := planTable(t)
	golden := filepath.Join("testdata", "plan.golden")
	if *updatePlan {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(string(want), got); diff != "" {
		t.Errorf("the dispatch table changed (-golden +now):\n%s", diff)
	}
}

func checkCreateInvariants(t *testing.T, f CreateFlags, e env, p createPlan, err error) {
	t.Helper()
	fail := func(why string) { t.Errorf("create %s on %s: %s (plan %s, err %v)", f, e, why, p, err) }
	if err != nil {
		if !errors.Is(err, ErrInvalidFlags) && !errors.Is(err, ErrUnsupported) {
			fail("refused without ErrInvalidFlags or ErrUnsupported")
		}
		return
	}
	if p.kind.external() != (f&External != 0) || p.kind.full() != (f&DiskOnly == 0) {
		fail("kind does not follow DiskOnly/External")
	}
	if p.offline != !e.online {
		fail("offline does not follow the domain")
	}
	if p.offline && p.kind != kindInternalDiskOnly {
		fail("a shut-off domain can only take internal disk-only snapshots")
	}
	if p.live && p.kind != kindExternalFull {
		fail("Live without an external memory state")
	}
	if p.kind == kindExternalFull && (!(e.fds || e.saver) || !e.memoryDir) {
		fail("an external memory save planned without fd passing (or a StateSaver) or a memory directory")
	}
	if p.quiesce && (!e.agent || p.kind.full()) {
		fail("Quiesce without an agent or with memory")
	}
	if (p.kind == kindInternalFull) != (p.vmstate != vmstateNone) || (p.vmstate == vmstateJobs) != (p.kind == kindInternalFull && e.jobs) {
		fail("the vmstate backend does not follow the kind and QEMU's jobs")
	}
	if !p.record && p.kind.external() {
		fail("an external snapshot without a record")
	}
	if p.kind.external() && e.managed {
		fail("an external snapshot behind libvirt's back")
	}
}

func checkRevertInvariants(t *testing.T, k kind, f RevertFlags, e env, p revertPlan, err error) {
	t.Helper()
	fail := func(why string) { t.Errorf("revert %s %s on %s: %s (plan %s, err %v)", k, f, e, why, p, err) }
	if f&RevertRunning != 0 && f&RevertPaused != 0 {
		if !errors.Is(err, ErrInvalidFlags) {
			fail("RevertRunning|RevertPaused accepted")
		}
		return
	}
	if errors.Is(err, ErrRevertRisky) {
		if k.full() || f&RevertForce != 0 || p.method != revertRelaunch {
			fail("called risky without being a cold boot of a running guest, or despite RevertForce")
		}
		return
	}
	if err != nil {
		if !errors.Is(err, ErrUnsupported) {
			fail("refused without ErrUnsupported")
		}
		return
	}
	switch p.method {
	case revertLoad:
		if k != kindInternalFull || !e.online {
			fail("load in place of something other than an internal full snapshot of a running domain")
		}
		if (p.vmstate == vmstateJobs) != e.jobs || p.vmstate == vmstateNone {
			fail("the load backend does not follow QEMU's jobs")
		}
	case revertOffline:
		if e.online || k.external() {
			fail("qemu-img revert of a running domain or of an external snapshot")
		}
	case revertRelaunch:
		if !e.launcher || !e.online {
			fail("relaunch without a Launcher or without a running QEMU")
		}
		if k == kindExternalFull && !e.fds && !e.saver {
			fail("relaunch feeding memory without fd passing or a StateSaver")
		}
		if k == kindInternalFull {
			fail("relaunch for an internal full snapshot, which loads in place")
		}
		if !k.full() && f&RevertForce == 0 {
			fail("a disk-only snapshot reverted into a running domain (a cold boot) without RevertForce")
		}
	}
	if f&RevertRunning != 0 && !p.running || f&RevertPaused != 0 && p.running {
		fail("the run state after the revert does not follow the flags")
	}
	if p.internalDisks == k.external() {
		fail("internal disk check does not follow the kind")
	}
}

func checkDeleteInvariants(t *testing.T, k kind, f DeleteFlags, e env, p deletePlan, err error) {
	t.Helper()
	fail := func(why string) { t.Errorf("delete %s %s on %s: %s (plan %s, err %v)", k, f, e, why, p, err) }
	if err != nil {
		fail("refused")
		return
	}
	switch {
	case f&DeleteMetadataOnly != 0:
		if p.method != deleteMetadataOnly {
			fail("DeleteMetadataOnly touches images")
		}
	case k.external():
		if p.method != deleteMerge {
			fail("an external snapshot is not merged")
		}
	case k == kindInternalFull && e.online:
		if p.method != deleteByJob || (p.vmstate == vmstateJobs) != e.jobs {
			fail("an internal full snapshot of a running domain is not deleted with its vmstate backend")
		}
	default:
		if p.method != deleteByDisk {
			fail("an internal snapshot is not deleted disk by disk")
		}
	}
	if p.offline != !e.online {
		fail("offline does not follow the domain")
	}
}

// Flags outside an operation's set are refused before anything else.
func TestPlanUnknownFlags(t *testing.T) {
	e := env{online: true, jobs: true, fds: true, memoryDir: true, launcher: true, agent: true}
	if _, err := planCreate(CreateFlags(1<<20), e); !errors.Is(err, ErrInvalidFlags) {
		t.Errorf("create: %v", err)
	}
	if _, err := planRevert(kindInternalFull, StateRunning, RevertFlags(1<<20), e); !errors.Is(err, ErrInvalidFlags) {
		t.Errorf("revert: %v", err)
	}
	if _, err := planDelete(kindInternalFull, DeleteFlags(1<<20), e); !errors.Is(err, ErrInvalidFlags) {
		t.Errorf("delete: %v", err)
	}
}

// A domain reached through libvirt (go-qemu's LibvirtRPCMonitor) is
// recognised, and external snapshots of it are refused unless the caller
// says it keeps libvirt's disk sources in step.
func TestPlanManagedByLibvirt(t *testing.T) {
	mon := qmp.FromGoQEMU(goqemuqmp.NewLibvirtRPCMonitor("vm1", nil))
	d := &Domain{mon: mon}
	if !d.env().managed {
		t.Fatal("a libvirt RPC monitor is not taken for a managed domain")
	}
	if _, err := planCreate(External|DiskOnly, d.env()); !errors.Is(err, ErrUnsupported) {
		t.Errorf("external create behind libvirt: %v, want ErrUnsupported", err)
	}
	if _, err := planCreate(DiskOnly, d.env()); err != nil {
		t.Errorf("internal disk-only create behind libvirt: %v", err)
	}
	d.opts.ManagedChainChanges = true
	if d.env().managed {
		t.Error("ManagedChainChanges did not allow chain changes")
	}
}
