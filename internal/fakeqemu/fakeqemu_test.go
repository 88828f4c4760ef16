package fakeqemu

import (
	"encoding/binary"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestGreetingAndNegotiation(t *testing.T) {
	for _, tc := range []struct {
		name    string
		profile Profile
		want    map[string]any
	}{
		{"7.2", QEMU72, map[string]any{"qemu": map[string]any{"major": 7.0, "minor": 2.0, "micro": 22.0}, "package": QEMU72.Package}},
		{"5.2", QEMU52, map[string]any{"qemu": map[string]any{"major": 5.0, "minor": 2.0, "micro": 0.0}, "package": QEMU52.Package}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := startFake(t, Options{Profile: tc.profile})
			c := dialRaw(t, s.Addr())
			g := c.greeting(time.Second)
			want := map[string]any{"QMP": map[string]any{"version": tc.want, "capabilities": []any{"oob"}}}
			if d := cmp.Diff(want, g); d != "" {
				t.Errorf("greeting (-want +got):\n%s", d)
			}
			e := c.mustFail("query-status", nil)
			if d := cmp.Diff(qerr{"CommandNotFound", "Expecting capabilities negotiation with 'qmp_capabilities'"}, *e, cmp.AllowUnexported(qerr{})); d != "" {
				t.Errorf("before negotiation (-want +got):\n%s", d)
			}
			c.mustRun("qmp_capabilities", nil, nil)
			e = c.mustFail("qmp_capabilities", nil)
			if e.class != "CommandNotFound" || e.desc != "Capabilities negotiation is already complete, command ignored" {
				t.Errorf("second qmp_capabilities: %v", e)
			}
			var v map[string]any
			c.mustRun("query-version", nil, &v)
			if d := cmp.Diff(tc.want, v); d != "" {
				t.Errorf("query-version (-want +got):\n%s", d)
			}
		})
	}
}

func TestCommandErrors(t *testing.T) {
	s := startFake(t, Options{})
	c := connect(t, s)
	for _, tc := range []struct {
		command string
		args    any
		want    qerr
	}{
		{"bogus-cmd", nil, qerr{"CommandNotFound", "The command bogus-cmd has not been found"}},
		{"query-status", map[string]any{"x": 1}, qerr{"GenericError", "Parameter 'x' is unexpected"}},
		{"blockdev-snapshot-internal-sync", map[string]any{"device": "disk0"}, qerr{"GenericError", "Parameter 'name' is missing"}},
		{"blockdev-snapshot-internal-sync", map[string]any{"device": 3, "name": "a"}, qerr{"GenericError", "Invalid parameter type for 'device', expected: string"}},
		{"job-dismiss", map[string]any{"id": "nope"}, qerr{"GenericError", "Job not found"}},
		{"snapshot-save", map[string]any{"job-id": "j", "tag": "t"}, qerr{"GenericError", "Parameter 'vmstate' is missing"}},
		{"snapshot-save", map[string]any{"job-id": "j", "tag": "t", "vmstate": "disk0"}, qerr{"GenericError", "Parameter 'devices' is missing"}},
		{"snapshot-delete", map[string]any{"job-id": "j", "tag": "t"}, qerr{"GenericError", "Parameter 'devices' is missing"}},
		{"closefd", map[string]any{"fdname": "m1"}, qerr{"GenericError", "File descriptor named 'm1' not found"}},
		{"getfd", map[string]any{"fdname": "m1"}, qerr{"GenericError", "No file descriptor supplied via SCM_RIGHTS"}},
	} {
		e := c.mustFail(tc.command, tc.args)
		if d := cmp.Diff(tc.want, *e, cmp.AllowUnexported(qerr{})); d != "" {
			t.Errorf("%s %v (-want +got):\n%s", tc.command, tc.args, d)
		}
	}
}

func TestRequestEnvelope(t *testing.T) {
	s := startFake(t, Options{})
	c := connect(t, s)
	for _, tc := range []struct{ in, want string }{
		{`{"execute": "query-status", "id": "abc"}`, `{"id":"abc","return":{"running":true,"singlestep":false,"status":"running"}}`},
		{`{"foo": 1}`, `{"error":{"class":"GenericError","desc":"QMP input member 'foo' is unexpected"}}`},
		{`[1]`, `{"error":{"class":"GenericError","desc":"QMP input must be a JSON object"}}`},
	} {
		if _, err := c.uc.Write([]byte(tc.in + "\n")); err != nil {
			t.Fatal(err)
		}
		r := <-c.replies
		got, _ := json.Marshal(r)
		if string(got) != tc.want {
			t.Errorf("%s: got %s, want %s", tc.in, got, tc.want)
		}
	}
}

func TestRunState(t *testing.T) {
	s := startFake(t, Options{Prelaunch: true, UUID: "12345678-1234-1234-1234-123456789abc"})
	c := connect(t, s)
	status := func() map[string]any {
		var st map[string]any
		c.mustRun("query-status", nil, &st)
		return st
	}
	if d := cmp.Diff(map[string]any{"status": "prelaunch", "singlestep": false, "running": false}, status()); d != "" {
		t.Errorf("initial status (-want +got):\n%s", d)
	}
	c.mustRun("cont", nil, nil)
	c.mustRun("cont", nil, nil) // no second RESUME
	if got := eventNames(c.drainEvents(20 * time.Millisecond)); !cmp.Equal(got, []string{"RESUME"}) {
		t.Errorf("events after cont, cont = %v, want [RESUME]", got)
	}
	c.mustRun("stop", nil, nil)
	c.mustRun("stop", nil, nil)
	if got := eventNames(c.drainEvents(20 * time.Millisecond)); !cmp.Equal(got, []string{"STOP"}) {
		t.Errorf("events after stop, stop = %v, want [STOP]", got)
	}
	if st := status(); st["status"] != "paused" || st["running"] != false {
		t.Errorf("status after stop = %v", st)
	}
	if got := c.hmp("info status"); got != "VM status: paused\r\n" {
		t.Errorf("info status = %q", got)
	}
	var uuid map[string]string
	c.mustRun("query-uuid", nil, &uuid)
	if uuid["UUID"] != "12345678-1234-1234-1234-123456789abc" {
		t.Errorf("query-uuid = %v", uuid)
	}
}

func TestQueryCommandsByProfile(t *testing.T) {
	for _, tc := range []struct {
		profile  Profile
		jobs     bool
		bgSnap   bool
		fallback string
	}{
		{QEMU72, true, true, ""},
		{QEMU52, false, false, "The command snapshot-save has not been found"},
	} {
		s := startFake(t, Options{Profile: tc.profile})
		c := connect(t, s)
		var cmds []struct{ Name string }
		c.mustRun("query-commands", nil, &cmds)
		have := map[string]bool{}
		for _, x := range cmds {
			have[x.Name] = true
		}
		for _, n := range []string{"snapshot-save", "snapshot-load", "snapshot-delete"} {
			if have[n] != tc.jobs {
				t.Errorf("%d.%d: query-commands has %s = %v, want %v", tc.profile.Major, tc.profile.Minor, n, have[n], tc.jobs)
			}
		}
		for _, n := range []string{"query-jobs", "job-dismiss", "transaction", "human-monitor-command", "migrate", "getfd"} {
			if !have[n] {
				t.Errorf("%d.%d: query-commands lacks %s", tc.profile.Major, tc.profile.Minor, n)
			}
		}
		if tc.fallback != "" {
			e := c.mustFail("snapshot-save", map[string]any{"job-id": "j", "tag": "t", "vmstate": "disk0", "devices": []string{"disk0"}})
			if e.class != "CommandNotFound" || e.desc != tc.fallback {
				t.Errorf("snapshot-save on 5.2: %v", e)
			}
		}
		var caps []struct {
			Capability string
			State      bool
		}
		c.mustRun("query-migrate-capabilities", nil, &caps)
		gotBG := false
		for _, cp := range caps {
			gotBG = gotBG || cp.Capability == "background-snapshot"
		}
		if gotBG != tc.bgSnap {
			t.Errorf("%d.%d: background-snapshot offered = %v, want %v", tc.profile.Major, tc.profile.Minor, gotBG, tc.bgSnap)
		}
	}
}

type nodeInfo struct {
	NodeName         string `json:"node-name"`
	File             string `json:"file"`
	Drv              string `json:"drv"`
	RO               bool   `json:"ro"`
	BackingFile      string `json:"backing_file"`
	BackingFileDepth int    `json:"backing_file_depth"`
	Image            struct {
		Filename            string `json:"filename"`
		BackingFilename     string `json:"backing-filename"`
		FullBackingFilename string `json:"full-backing-filename"`
		Snapshots           []struct {
			ID          string `json:"id"`
			Name        string `json:"name"`
			VMStateSize uint64 `json:"vm-state-size"`
		} `json:"snapshots"`
		BackingImage *struct {
			Filename string `json:"filename"`
		} `json:"backing-image"`
	} `json:"image"`
}

func namedNodes(t *testing.T, c *rawClient, flat bool) map[string]nodeInfo {
	t.Helper()
	var nodes []nodeInfo
	c.mustRun("query-named-block-nodes", map[string]any{"flat": flat}, &nodes)
	out := map[string]nodeInfo{}
	for _, n := range nodes {
		if strings.HasPrefix(n.NodeName, "#block") {
			n.NodeName = "#" + n.File + "/" + n.Drv // stable key for automatic names
		}
		out[n.NodeName] = n
	}
	return out
}

func TestNamedBlockNodes(t *testing.T) {
	s := startFake(t, Options{})
	if err := s.AddDiskSnapshot("disk1", "pre"); err != nil {
		t.Fatal(err)
	}
	c := connect(t, s)
	dir := filepath.Dir(mustChain(t, s, "disk0")[0])
	nodes := namedNodes(t, c, false)
	if len(nodes) != 6 {
		t.Fatalf("got %d nodes, want 6 (3 images x format+file): %v", len(nodes), nodes)
	}
	d0 := nodes["disk0"]
	if d0.BackingFile != dir+"/base.qcow2" || d0.BackingFileDepth != 1 || d0.Image.BackingFilename != "base.qcow2" ||
		d0.Image.BackingImage == nil || d0.Image.BackingImage.Filename != dir+"/base.qcow2" {
		t.Errorf("disk0 = %+v", d0)
	}
	base := nodes["#"+dir+"/base.qcow2/qcow2"]
	if !base.RO {
		t.Errorf("backing node is not read-only: %+v", base)
	}
	if f := nodes["file0"]; f.Drv != "file" || f.File != dir+"/d0.qcow2" {
		t.Errorf("file0 = %+v", f)
	}
	snaps := nodes["disk1"].Image.Snapshots
	if len(snaps) != 1 || snaps[0].Name != "pre" || snaps[0].ID != "1" || snaps[0].VMStateSize != 0 {
		t.Errorf("disk1 snapshots = %+v", snaps)
	}
	// flat: no nested backing image and depth 0, as QEMU 7.2 reports.
	if d := namedNodes(t, c, true)["disk0"]; d.Image.BackingImage != nil || d.BackingFileDepth != 0 {
		t.Errorf("flat disk0 = %+v", d)
	}
	var blk []struct {
		Qdev     string   `json:"qdev"`
		Device   string   `json:"device"`
		Inserted nodeInfo `json:"inserted"`
	}
	c.mustRun("query-block", nil, &blk)
	if len(blk) != 2 || blk[0].Qdev != "/machine/peripheral/dev0/virtio-backend" || blk[0].Inserted.NodeName != "disk0" ||
		blk[1].Inserted.NodeName != "disk1" || blk[0].Device != "" {
		t.Errorf("query-block = %+v", blk)
	}
}

func mustChain(t *testing.T, s *Server, node string) []string {
	t.Helper()
	ch, err := s.Chain(node)
	if err != nil {
		t.Fatal(err)
	}
	return ch
}

func snapNames(t *testing.T, s *Server, node string) []string {
	t.Helper()
	sn, err := s.DiskSnapshots(node)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, x := range sn {
		out = append(out, x.Name)
	}
	return out
}

func internalAction(dev, name string) map[string]any {
	return map[string]any{"type": "blockdev-snapshot-internal-sync", "data": map[string]any{"device": dev, "name": name}}
}

func externalAction(node, file, newNode string) map[string]any {
	return map[string]any{"type": "blockdev-snapshot-sync", "data": map[string]any{
		"node-name": node, "snapshot-file": file, "snapshot-node-name": newNode, "format": "qcow2"}}
}

func tx(actions ...map[string]any) map[string]any { return map[string]any{"actions": actions} }

func TestTransactionInternal(t *testing.T) {
	for _, tc := range []struct {
		name        string
		fault       *Fault
		actions     map[string]any
		wantErr     string
		want0       []string
		want1       []string
		wantCommand bool
	}{
		{name: "both disks", actions: tx(internalAction("disk0", "a"), internalAction("disk1", "a")), want0: []string{"a"}, want1: []string{"a"}},
		{name: "existing name on second disk", actions: tx(internalAction("disk0", "b"), internalAction("disk1", "x")),
			wantErr: "Snapshot with name 'x' already exists on device 'disk1'"},
		{name: "same name twice on one disk", actions: tx(internalAction("disk0", "b"), internalAction("disk0", "b")),
			wantErr: "Snapshot with name 'b' already exists on device 'disk0'"},
		{name: "fault on second disk", fault: &Fault{Command: "transaction", Device: "disk1", Desc: "injected"},
			actions: tx(internalAction("disk0", "b"), internalAction("disk1", "b")), wantErr: "injected"},
		{name: "fault on action type", fault: &Fault{Command: "blockdev-snapshot-internal-sync", Device: "disk1", Class: "DeviceNotFound", Desc: "gone"},
			actions: tx(internalAction("disk0", "b"), internalAction("disk1", "b")), wantErr: "gone"},
		{name: "abort action", actions: tx(internalAction("disk0", "b"), map[string]any{"type": "abort", "data": map[string]any{}}),
			wantErr: "Transaction aborted using Abort action"},
		{name: "file node", actions: tx(internalAction("file0", "b")), wantErr: "Need a root block node"},
		{name: "qdev id", actions: tx(internalAction("dev0", "b")), wantErr: "Cannot find device='dev0' nor node-name='dev0'"},
		{name: "empty name", actions: tx(internalAction("disk0", "")), wantErr: "Name is empty"},
		{name: "bad type", actions: tx(map[string]any{"type": "bogus", "data": map[string]any{}}), wantErr: "Parameter 'type' does not accept value 'bogus'"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := startFake(t, Options{})
			if err := s.AddDiskSnapshot("disk1", "x"); err != nil {
				t.Fatal(err)
			}
			if tc.fault != nil {
				s.Fail(*tc.fault)
			}
			c := connect(t, s)
			_, e := c.run("transaction", tc.actions)
			want1 := append([]string{"x"}, tc.want1...)
			if tc.wantErr == "" {
				if e != nil {
					t.Fatalf("transaction: %v", e)
				}
			} else {
				if e == nil || e.desc != tc.wantErr {
					t.Fatalf("transaction error = %v, want %q", e, tc.wantErr)
				}
				if tc.fault != nil && tc.fault.Class != "" && e.class != tc.fault.Class {
					t.Errorf("class = %s, want %s", e.class, tc.fault.Class)
				}
			}
			if got := snapNames(t, s, "disk0"); !cmp.Equal(got, tc.want0) {
				t.Errorf("disk0 snapshots = %v, want %v", got, tc.want0)
			}
			if got := snapNames(t, s, "disk1"); !cmp.Equal(got, want1) {
				t.Errorf("disk1 snapshots = %v, want %v", got, want1)
			}
		})
	}
}

func TestTransactionExternal(t *testing.T) {
	s := startFake(t, Options{CreateOverlays: true})
	c := connect(t, s)
	dir := filepath.Dir(mustChain(t, s, "disk0")[0])
	ov0, ov1 := dir+"/ov0.qcow2", dir+"/ov1.qcow2"
	if err := s.WriteDisk("disk0", 0xAA); err != nil {
		t.Fatal(err)
	}
	// An overlay name clash on the second action leaves both disks alone.
	e := c.mustFail("transaction", tx(externalAction("disk0", ov0, "ov0"), externalAction("disk1", ov1, "disk0")))
	if e.desc != "New overlay node-name already in use" {
		t.Errorf("clash: %v", e)
	}
	if got := mustChain(t, s, "disk0"); len(got) != 2 {
		t.Errorf("failed transaction changed disk0's chain: %v", got)
	}
	e = c.mustFail("transaction", tx(map[string]any{"type": "blockdev-snapshot-sync", "data": map[string]any{"node-name": "disk0", "snapshot-file": ov0}}))
	if e.desc != "New overlay node-name missing" {
		t.Errorf("missing node name: %v", e)
	}
	c.mustRun("transaction", tx(externalAction("disk0", ov0, "ov0"), externalAction("disk1", ov1, "ov1")), nil)
	if got, want := mustChain(t, s, "disk0"), []string{ov0, dir + "/d0.qcow2", dir + "/base.qcow2"}; !cmp.Equal(got, want) {
		t.Errorf("disk0 chain = %v, want %v", got, want)
	}
	if n, _ := s.ActiveNode("disk1"); n != "ov1" {
		t.Errorf("active node of disk1 = %s", n)
	}
	if _, err := os.Stat(ov0); err != nil {
		t.Errorf("overlay file: %v", err)
	}
	// Writes go to the overlay; the snapshotted image keeps its data.
	if err := s.WriteDisk("disk0", 0xBB); err != nil {
		t.Fatal(err)
	}
	for node, want := range map[string]byte{"disk0": 0xAA, "ov0": 0xBB} {
		if got, _ := s.DiskContent(node); got != want {
			t.Errorf("content of %s = %#x, want %#x", node, got, want)
		}
	}
	nodes := namedNodes(t, c, true)
	if o := nodes["ov0"]; o.BackingFile != dir+"/d0.qcow2" || o.Image.BackingFilename != dir+"/d0.qcow2" || o.RO {
		t.Errorf("ov0 = %+v", o)
	}
	if !nodes["disk0"].RO {
		t.Errorf("old active node not read-only after snapshot")
	}
	var blk []struct{ Inserted nodeInfo }
	c.mustRun("query-block", nil, &blk)
	if blk[0].Inserted.NodeName != "ov0" || blk[0].Inserted.BackingFileDepth != 2 || blk[1].Inserted.File != ov1 {
		t.Errorf("query-block after snapshot = %+v", blk)
	}
	e = c.mustFail("blockdev-snapshot-sync", map[string]any{"device": "disk0", "snapshot-file": dir + "/x"})
	if e.desc != "Cannot find device='disk0' nor node-name=''" {
		t.Errorf("device lookup: %v", e)
	}
	e = c.mustFail("blockdev-snapshot-sync", map[string]any{"node-name": "ov0", "snapshot-file": ov0, "snapshot-node-name": "ov0b"})
	if e.desc != "Error: Trying to create an image with the same filename as the backing file" {
		t.Errorf("same file: %v", e)
	}
}

func TestDeleteInternal(t *testing.T) {
	s := startFake(t, Options{})
	c := connect(t, s)
	c.mustRun("blockdev-snapshot-internal-sync", map[string]any{"device": "disk0", "name": "a"}, nil)
	c.mustRun("blockdev-snapshot-internal-sync", map[string]any{"device": "disk0", "name": "b"}, nil)
	var info map[string]any
	c.mustRun("blockdev-snapshot-delete-internal-sync", map[string]any{"device": "disk0", "name": "a"}, &info)
	if info["name"] != "a" || info["id"] != "1" || info["vm-state-size"] != 0.0 {
		t.Errorf("deleted snapshot info = %v", info)
	}
	for _, tc := range []struct {
		args map[string]any
		want string
	}{
		{map[string]any{"device": "disk0", "name": "a"}, "Snapshot with id 'null' and name 'a' does not exist on device 'disk0'"},
		{map[string]any{"device": "disk0", "id": "99"}, "Snapshot with id '99' and name 'null' does not exist on device 'disk0'"},
		{map[string]any{"device": "disk0", "id": "1", "name": "b"}, "Snapshot with id '1' and name 'b' does not exist on device 'disk0'"},
		{map[string]any{"device": "disk0"}, "Name or id must be provided"},
		{map[string]any{"device": "nope", "name": "b"}, "Cannot find device='nope' nor node-name='nope'"},
	} {
		if e := c.mustFail("blockdev-snapshot-delete-internal-sync", tc.args); e.desc != tc.want {
			t.Errorf("%v: %v, want %q", tc.args, e, tc.want)
		}
	}
	c.mustRun("blockdev-snapshot-delete-internal-sync", map[string]any{"device": "disk0", "id": "2"}, nil)
	if got := snapNames(t, s, "disk0"); len(got) != 0 {
		t.Errorf("snapshots left: %v", got)
	}
}

func saveArgs(id, tag string, devices ...string) map[string]any {
	return map[string]any{"job-id": id, "tag": tag, "vmstate": devices[0], "devices": devices}
}

type jobInfo struct {
	ID              string `json:"id"`
	Type            string `json:"type"`
	Status          string `json:"status"`
	CurrentProgress int    `json:"current-progress"`
	TotalProgress   int    `json:"total-progress"`
	Error           string `json:"error"`
}

func TestSnapshotJobs(t *testing.T) {
	s := startFake(t, Options{})
	c := connect(t, s)
	s.SetCounter(1000)
	if err := s.WriteDisk("disk0", 1); err != nil {
		t.Fatal(err)
	}
	c.mustRun("snapshot-save", saveArgs("j0", "s1", "disk0", "disk1"), nil)
	evs := c.eventsUntil("JOB_STATUS_CHANGE", "status", "concluded")
	if got, want := eventNames(evs), []string{"JOB_STATUS_CHANGE", "JOB_STATUS_CHANGE", "STOP", "RESUME",
		"JOB_STATUS_CHANGE", "JOB_STATUS_CHANGE", "JOB_STATUS_CHANGE"}; !cmp.Equal(got, want) {
		t.Errorf("save events = %v, want %v", got, want)
	}
	if got, want := jobStatuses(evs, "j0"), []string{"created", "running", "waiting", "pending", "concluded"}; !cmp.Equal(got, want) {
		t.Errorf("save job statuses = %v, want %v", got, want)
	}
	var jobs []jobInfo
	c.mustRun("query-jobs", nil, &jobs)
	if d := cmp.Diff([]jobInfo{{ID: "j0", Type: "snapshot-save", Status: "concluded", CurrentProgress: 1, TotalProgress: 1}}, jobs); d != "" {
		t.Errorf("query-jobs (-want +got):\n%s", d)
	}
	if e := c.mustFail("snapshot-save", saveArgs("j0", "s2", "disk0")); e.desc != "Job ID 'j0' already in use" {
		t.Errorf("duplicate job id: %v", e)
	}
	c.mustRun("job-dismiss", map[string]any{"id": "j0"}, nil)
	if got := jobStatuses(c.drainEvents(10*time.Millisecond), "j0"); !cmp.Equal(got, []string{"null"}) {
		t.Errorf("dismiss events = %v", got)
	}
	sn, _ := s.DiskSnapshots("disk0")
	if len(sn) != 1 || sn[0].Name != "s1" || sn[0].VMStateSize == 0 {
		t.Errorf("disk0 snapshots = %+v", sn)
	}
	if sn, _ := s.DiskSnapshots("disk1"); len(sn) != 1 || sn[0].VMStateSize != 0 {
		t.Errorf("disk1 snapshots = %+v (vm state belongs on the vmstate disk only)", sn)
	}

	// Change the guest, then load: counter and disk come back.
	s.SetCounter(5)
	s.WriteDisk("disk0", 2)
	c.mustRun("snapshot-load", saveArgs("l1", "s1", "disk0", "disk1"), nil)
	evs = c.eventsUntil("JOB_STATUS_CHANGE", "status", "concluded")
	if got := jobStatuses(evs, "l1"); !cmp.Equal(got, []string{"created", "running", "waiting", "pending", "concluded"}) {
		t.Errorf("load statuses = %v", got)
	}
	if got, _ := s.DiskContent("disk0"); got != 1 {
		t.Errorf("disk0 content after load = %d, want 1", got)
	}
	if got := s.Counter(); got < 1000 || got > 1002 {
		t.Errorf("counter after load = %d, want the saved ~1000", got)
	}
	if s.Status() != "running" {
		t.Errorf("status after load = %s", s.Status())
	}
	c.mustRun("job-dismiss", map[string]any{"id": "l1"}, nil)

	for _, tc := range []struct {
		command    string
		args       map[string]any
		wantErr    string
		wantStatus string
	}{
		{"snapshot-save", saveArgs("e1", "s1", "disk0", "disk1"), "Snapshot 's1' already exists in one or more devices", "running"},
		{"snapshot-save", saveArgs("e2", "s9", "nope"), "No block device node 'nope'", "running"},
		{"snapshot-save", map[string]any{"job-id": "e3", "tag": "s9", "vmstate": "disk0", "devices": []string{"disk1"}}, "vmstate block device 'disk0' does not exist", "running"},
		{"snapshot-save", map[string]any{"job-id": "e4", "tag": "s9", "vmstate": "disk0", "devices": []string{}}, "At least one device is required for snapshot", "running"},
		{"snapshot-delete", map[string]any{"job-id": "e5", "tag": "s1", "devices": []string{"nope"}}, "No block device node 'nope'", "running"},
		// A failed load leaves the guest stopped in restore-vm, like QEMU.
		{"snapshot-load", saveArgs("e6", "zz", "disk0", "disk1"), "Snapshot 'zz' does not exist in one or more devices", "restore-vm"},
	} {
		c.mustRun(tc.command, tc.args, nil)
		id := tc.args["job-id"].(string)
		evs := c.eventsUntil("JOB_STATUS_CHANGE", "status", "concluded")
		if got := jobStatuses(evs, id); !cmp.Equal(got, []string{"created", "running", "aborting", "concluded"}) {
			t.Errorf("%s: statuses = %v", id, got)
		}
		c.mustRun("query-jobs", nil, &jobs)
		if len(jobs) != 1 || jobs[0].Error != tc.wantErr || jobs[0].Type != tc.command {
			t.Errorf("%s: query-jobs = %+v, want error %q", id, jobs, tc.wantErr)
		}
		if s.Status() != tc.wantStatus {
			t.Errorf("%s: status = %s, want %s", id, s.Status(), tc.wantStatus)
		}
		c.mustRun("job-dismiss", map[string]any{"id": id}, nil)
	}

	c.mustRun("cont", nil, nil)
	c.mustRun("blockdev-snapshot-internal-sync", map[string]any{"device": "disk1", "name": "disk-only"}, nil)
	c.mustRun("snapshot-load", saveArgs("e7", "disk-only", "disk1"), nil)
	c.eventsUntil("JOB_STATUS_CHANGE", "status", "concluded")
	c.mustRun("query-jobs", nil, &jobs)
	if jobs[0].Error != "This is a disk-only snapshot. Revert to it  offline using qemu-img" {
		t.Errorf("disk-only load error = %q", jobs[0].Error)
	}
	c.mustRun("job-dismiss", map[string]any{"id": "e7"}, nil)

	c.mustRun("snapshot-delete", map[string]any{"job-id": "d1", "tag": "s1", "devices": []string{"disk0", "disk1"}}, nil)
	if got := jobStatuses(c.eventsUntil("JOB_STATUS_CHANGE", "status", "concluded"), "d1"); !cmp.Equal(got, []string{"created", "running", "waiting", "pending", "concluded"}) {
		t.Errorf("delete statuses = %v", got)
	}
	if got := snapNames(t, s, "disk0"); len(got) != 0 {
		t.Errorf("disk0 snapshots after delete = %v", got)
	}
}

func TestHMP(t *testing.T) {
	s := startFake(t, Options{Profile: QEMU52, Paused: true})
	c := connect(t, s)
	if got := c.hmp("info snapshots"); got != "There is no snapshot available.\r\n" {
		t.Errorf("empty info snapshots = %q", got)
	}
	s.SetCounter(0x1234)
	s.WriteDisk("disk1", 7)
	if got := c.hmp("savevm h1"); got != "" {
		t.Errorf("savevm = %q", got)
	}
	if got := c.hmp("savevm h1"); got != "" { // overwrites, like QEMU
		t.Errorf("second savevm = %q", got)
	}
	c.mustRun("blockdev-snapshot-internal-sync", map[string]any{"device": "disk0", "name": "only0"}, nil)
	info := c.hmp("info snapshots")
	lines := strings.Split(info, "\r\n")
	wantHeader := "ID        TAG               VM SIZE                DATE     VM CLOCK     ICOUNT"
	if len(lines) != 8 || lines[0] != "List of snapshots present on all disks:" || lines[1] != wantHeader ||
		!strings.HasPrefix(lines[2], "--        h1                816 KiB ") ||
		lines[4] != "List of partial (non-loadable) snapshots on '':" || lines[5] != wantHeader ||
		!strings.HasPrefix(lines[6], "2         only0                 0 B ") {
		t.Errorf("info snapshots =\n%s", info)
	}
	s.SetCounter(1)
	s.WriteDisk("disk1", 9)
	if got := c.hmp("loadvm h1"); got != "" {
		t.Errorf("loadvm = %q", got)
	}
	if s.Counter() != 0x1234 {
		t.Errorf("counter after loadvm = %#x", s.Counter())
	}
	if got, _ := s.DiskContent("disk1"); got != 7 {
		t.Errorf("disk1 after loadvm = %d", got)
	}
	for _, tc := range []struct{ line, want string }{
		{"loadvm nope", "Error: Snapshot 'nope' does not exist in one or more devices\r\n"},
		{"delvm nope", ""},
		{"xp /1gx 0x7000", "0000000000007000: 0x0000000000001234\r\n"},
		{"xp /1wx 0x7000", "0000000000007000: 0x00001234\r\n"},
		{"xp /1gx 0x8000", "0000000000008000: 0x0000000000000000\r\n"},
		{"info status", "VM status: paused\r\n"},
		{"bogus", "unknown command: 'bogus'\r\n"},
		{"loadvm only0", "Error: Snapshot 'only0' does not exist in one or more devices\r\n"},
		{"delvm h1", ""},
		{"info snapshots", "List of snapshots present on all disks:\r\nNone\r\n\r\nList of partial (non-loadable) snapshots on '':\r\n" + wantHeader + "\r\n" + lines[6] + "\r\n"},
		{"delvm only0", ""},
		{"savevm", ""},
	} {
		if got := c.hmp(tc.line); got != tc.want {
			t.Errorf("%q = %q, want %q", tc.line, got, tc.want)
		}
	}
	if got := snapNames(t, s, "disk1"); len(got) != 1 || !strings.HasPrefix(got[0], "vm-20") {
		t.Errorf("unnamed savevm made %v", got)
	}
	s.Fail(Fault{Command: "savevm", Desc: "No space left on device"})
	if got := c.hmp("savevm x"); got != "Error: No space left on device\r\n" {
		t.Errorf("faulted savevm = %q", got)
	}
	if got := s.HMPCommands(); got[0] != "info snapshots" || got[len(got)-1] != "savevm x" {
		t.Errorf("HMPCommands = %v", got)
	}
}

func TestMigrateToFD(t *testing.T) {
	s := startFake(t, Options{MemoryBytes: 4 << 20})
	c := connect(t, s)
	var mig map[string]any
	c.mustRun("query-migrate", nil, &mig)
	if len(mig) != 0 {
		t.Errorf("query-migrate before any migration = %v", mig)
	}
	c.mustRun("migrate-set-capabilities", map[string]any{"capabilities": []any{map[string]any{"capability": "events", "state": true}}}, nil)
	c.mustRun("migrate-set-parameters", map[string]any{"max-bandwidth": int64(1) << 40}, nil)
	var params map[string]any
	c.mustRun("query-migrate-parameters", nil, &params)
	if params["max-bandwidth"] != float64(int64(1)<<40) || params["downtime-limit"] != 300.0 {
		t.Errorf("parameters = %v", params)
	}
	e := c.mustFail("migrate-set-capabilities", map[string]any{"capabilities": []any{map[string]any{"capability": "bogus", "state": true}}})
	if e.desc != "Parameter 'capability' does not accept value 'bogus'" {
		t.Errorf("bad capability: %v", e)
	}
	path := filepath.Join(t.TempDir(), "mem")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	c.mustRun("getfd", map[string]any{"fdname": "m1"}, nil, f)
	f.Close()
	if e := c.mustFail("migrate", map[string]any{"uri": "fd:nope"}); e.desc != "File descriptor named 'nope' has not been found" {
		t.Errorf("unknown fd: %v", e)
	}
	if got := c.drainEvents(10 * time.Millisecond); len(got) != 2 || got[1].Data["status"] != "failed" {
		t.Errorf("events of failed migrate = %v", got)
	}
	s.SetCounter(77)
	c.mustRun("migrate", map[string]any{"uri": "fd:m1"}, nil)
	evs := c.eventsUntil("MIGRATION", "status", "completed")
	var statuses []string
	for _, ev := range evs {
		if ev.Name == "MIGRATION" {
			statuses = append(statuses, ev.Data["status"].(string))
		}
	}
	if !cmp.Equal(statuses, []string{"setup", "active", "completed"}) || !cmp.Equal(eventNames(evs)[1:3], []string{"MIGRATION_PASS", "MIGRATION"}) {
		t.Errorf("migration events = %v", evs)
	}
	c.mustRun("query-migrate", nil, &mig)
	ram, _ := mig["ram"].(map[string]any)
	if mig["status"] != "completed" || ram["total"] != float64(4<<20) || ram["remaining"] != 0.0 || ram["transferred"] != float64(4<<20) {
		t.Errorf("query-migrate = %v", mig)
	}
	if s.Status() != "postmigrate" {
		t.Errorf("status after migration = %s, want postmigrate", s.Status())
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(data) != 4<<20 || string(data[:4]) != StreamMagic || binary.BigEndian.Uint32(data[4:]) != 3 {
		t.Fatalf("stream: %d bytes, starts %q", len(data), data[:8])
	}
	if got := binary.LittleEndian.Uint64(data[len(data)-8:]); got < 77 || got > 80 {
		t.Errorf("stream counter = %d, want ~77", got)
	}
	if e := c.mustFail("migrate", map[string]any{"uri": "fd:m1"}); e.desc != "Can't migrate the vm that was paused due to previous migration" {
		t.Errorf("migrate after migrate: %v", e)
	}
	if e := c.mustFail("closefd", map[string]any{"fdname": "m1"}); e.desc != "File descriptor named 'm1' not found" {
		t.Errorf("fd not consumed by migrate: %v", e)
	}
	c.mustRun("cont", nil, nil)
	if s.Status() != "running" {
		t.Errorf("cont after migration: %s", s.Status())
	}
}

func TestMigrateCancelAndBackground(t *testing.T) {
	s := startFake(t, Options{MemoryBytes: 8 << 20})
	c := connect(t, s)
	c.mustRun("migrate-set-capabilities", map[string]any{"capabilities": []any{map[string]any{"capability": "events", "state": true}}}, nil)
	c.mustRun("migrate-set-parameters", map[string]any{"max-bandwidth": 16 << 20}, nil) // 0.5 s for 8 MiB
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	go func() {
		buf := make([]byte, 1<<16)
		for {
			if _, err := r.Read(buf); err != nil {
				return
			}
		}
	}()
	c.mustRun("getfd", map[string]any{"fdname": "p"}, nil, w)
	w.Close()
	c.mustRun("migrate", map[string]any{"uri": "fd:p"}, nil)
	c.eventsUntil("MIGRATION", "status", "active")
	var mig map[string]any
	c.mustRun("query-migrate", nil, &mig)
	if mig["status"] != "active" || mig["expected-downtime"] == nil {
		t.Errorf("query-migrate while active = %v", mig)
	}
	c.mustRun("migrate_cancel", nil, nil)
	c.eventsUntil("MIGRATION", "status", "cancelled")
	mig = nil
	c.mustRun("query-migrate", nil, &mig)
	if d := cmp.Diff(map[string]any{"status": "cancelled"}, mig); d != "" {
		t.Errorf("after cancel (-want +got):\n%s", d)
	}
	if s.Status() != "running" {
		t.Errorf("guest after cancel = %s", s.Status())
	}

	// Background snapshot: the guest keeps running.
	c.mustRun("migrate-set-parameters", map[string]any{"max-bandwidth": int64(1) << 40}, nil)
	c.mustRun("migrate-set-capabilities", map[string]any{"capabilities": []any{map[string]any{"capability": "background-snapshot", "state": true}}}, nil)
	f, err := os.Create(filepath.Join(t.TempDir(), "bg"))
	if err != nil {
		t.Fatal(err)
	}
	c.mustRun("getfd", map[string]any{"fdname": "bg"}, nil, f)
	f.Close()
	c.mustRun("migrate", map[string]any{"uri": "fd:bg"}, nil)
	c.eventsUntil("MIGRATION", "status", "completed")
	if s.Status() != "running" {
		t.Errorf("guest after background snapshot = %s, want running", s.Status())
	}
}

func TestFaults(t *testing.T) {
	t.Run("fail nth call", func(t *testing.T) {
		s := startFake(t, Options{})
		s.Fail(Fault{Command: "query-status", Nth: 2, Class: "DeviceNotActive", Desc: "boom"})
		c := connect(t, s)
		c.mustRun("query-status", nil, nil)
		if e := c.mustFail("query-status", nil); e.class != "DeviceNotActive" || e.desc != "boom" {
			t.Errorf("2nd call: %v", e)
		}
		c.mustRun("query-status", nil, nil)
	})
	t.Run("fail every call", func(t *testing.T) {
		s := startFake(t, Options{})
		s.Fail(Fault{Command: "stop", Desc: "no"})
		c := connect(t, s)
		for range 2 {
			if e := c.mustFail("stop", nil); e.class != "GenericError" {
				t.Errorf("stop: %v", e)
			}
		}
		if s.Status() != "running" {
			t.Errorf("failed stop changed status to %s", s.Status())
		}
	})
	t.Run("fail job", func(t *testing.T) {
		s := startFake(t, Options{})
		s.FailJob("snapshot-save", "Error while writing VM state: No space left on device")
		c := connect(t, s)
		c.mustRun("snapshot-save", saveArgs("j", "t", "disk0"), nil)
		if got := jobStatuses(c.eventsUntil("JOB_STATUS_CHANGE", "status", "concluded"), "j"); !cmp.Equal(got, []string{"created", "running", "aborting", "concluded"}) {
			t.Errorf("statuses = %v", got)
		}
		var jobs []jobInfo
		c.mustRun("query-jobs", nil, &jobs)
		if jobs[0].Error != "Error while writing VM state: No space left on device" {
			t.Errorf("job error = %q", jobs[0].Error)
		}
		if got := snapNames(t, s, "disk0"); len(got) != 0 {
			t.Errorf("failed job left snapshots %v", got)
		}
	})
	t.Run("fail job command on a device", func(t *testing.T) {
		s := startFake(t, Options{})
		s.Fail(Fault{Command: "snapshot-save", Device: "disk1", Desc: "busy"})
		c := connect(t, s)
		c.mustRun("snapshot-save", saveArgs("a", "t", "disk0"), nil)
		if e := c.mustFail("snapshot-save", saveArgs("b", "t2", "disk0", "disk1")); e.desc != "busy" {
			t.Errorf("device fault: %v", e)
		}
	})
	t.Run("drop on command and reconnect", func(t *testing.T) {
		s := startFake(t, Options{})
		s.DropOn("stop", 1)
		c := connect(t, s)
		c.send("stop", nil)
		select {
		case <-c.closed:
		case r := <-c.replies:
			t.Fatalf("got reply %v, want a dropped connection", r)
		case <-time.After(2 * time.Second):
			t.Fatal("connection not dropped")
		}
		if s.Status() != "running" {
			t.Errorf("dropped stop still ran: %s", s.Status())
		}
		c2 := connect(t, s)
		c2.mustRun("stop", nil, nil) // only the first call drops
		if got := s.Commands(); !cmp.Equal(got, []string{"qmp_capabilities", "stop", "qmp_capabilities", "stop"}) {
			t.Errorf("Commands = %v", got)
		}
	})
	t.Run("drop mid job", func(t *testing.T) {
		s := startFake(t, Options{})
		s.DropMidJob("snapshot-save")
		c := connect(t, s)
		c.mustRun("snapshot-save", saveArgs("j", "t", "disk0"), nil)
		<-c.closed
		c2 := connect(t, s)
		var jobs []jobInfo
		deadline := time.Now().Add(2 * time.Second)
		for {
			c2.mustRun("query-jobs", nil, &jobs)
			if len(jobs) == 1 && jobs[0].Status == "concluded" || time.Now().After(deadline) {
				break
			}
			time.Sleep(time.Millisecond)
		}
		if len(jobs) != 1 || jobs[0].Status != "concluded" || jobs[0].Error != "" {
			t.Errorf("job after reconnect = %+v", jobs)
		}
		if got := snapNames(t, s, "disk0"); !cmp.Equal(got, []string{"t"}) {
			t.Errorf("snapshots = %v", got)
		}
	})
	t.Run("delay", func(t *testing.T) {
		s := startFake(t, Options{})
		s.Delay("query-status", 80*time.Millisecond)
		c := connect(t, s)
		start := time.Now()
		c.mustRun("query-status", nil, nil)
		if d := time.Since(start); d < 80*time.Millisecond {
			t.Errorf("reply after %v, want >= 80ms", d)
		}
		start = time.Now()
		c.mustRun("query-version", nil, nil)
		if d := time.Since(start); d > 50*time.Millisecond {
			t.Errorf("undelayed reply took %v", d)
		}
	})
	t.Run("events", func(t *testing.T) {
		s := startFake(t, Options{})
		s.EventBeforeReply("qmp_capabilities", "SHUTDOWN", map[string]any{"guest": true})
		s.EventBeforeReply("query-status", "RESUME", nil)
		c := dialRaw(t, s.Addr())
		c.greeting(time.Second)
		s.EmitEvent("LOST", nil) // not negotiated yet: lost, as in QEMU
		c.mustRun("qmp_capabilities", nil, nil)
		if ev := c.nextEvent(time.Second); ev.Name != "SHUTDOWN" || ev.Data["guest"] != true {
			t.Errorf("event before capabilities reply = %+v", ev)
		}
		c.mustRun("query-status", nil, nil)
		if ev := c.nextEvent(time.Second); ev.Name != "RESUME" {
			t.Errorf("event before reply = %+v", ev)
		}
		s.EmitEvent("BLOCK_JOB_READY", map[string]any{"device": "x"})
		if ev := c.nextEvent(time.Second); ev.Name != "BLOCK_JOB_READY" || ev.Data["device"] != "x" {
			t.Errorf("emitted event = %+v", ev)
		}
		if evs := c.drainEvents(10 * time.Millisecond); len(evs) != 0 {
			t.Errorf("extra events %v", evs)
		}
	})
}

func TestOneClientAtATime(t *testing.T) {
	s := startFake(t, Options{})
	c1 := connect(t, s)
	c2 := dialRaw(t, s.Addr())
	select {
	case g := <-c2.greet:
		t.Fatalf("second client got a greeting while the first is connected: %v", g)
	case <-time.After(50 * time.Millisecond):
	}
	c1.mustRun("query-status", nil, nil)
	c1.uc.Close()
	c2.greeting(2 * time.Second)
	c2.mustRun("qmp_capabilities", nil, nil)
	c2.mustRun("query-status", nil, nil)
}

func TestCounterAdvancesOnlyWhileRunning(t *testing.T) {
	s := startFake(t, Options{Paused: true})
	c := connect(t, s)
	c.mustRun("query-status", nil, nil)
	if s.Counter() != 0 {
		t.Errorf("counter advanced while paused: %d", s.Counter())
	}
	c.mustRun("cont", nil, nil)
	c.mustRun("query-status", nil, nil)
	c.mustRun("query-status", nil, nil)
	if s.Counter() != 2 {
		t.Errorf("counter = %d, want 2 (one per command while running)", s.Counter())
	}
}

func TestStartValidation(t *testing.T) {
	for _, tc := range []Options{
		{Disks: []Disk{{Node: "", File: "/x"}}},
		{Disks: []Disk{{Node: "a", File: "/x"}, {Node: "a", File: "/y"}}},
		{MemoryBytes: 8},
	} {
		if s, err := Start(tc); err == nil {
			s.Close()
			t.Errorf("Start(%+v) succeeded", tc)
		}
	}
}
