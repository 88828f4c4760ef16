package fakeqemu

import (
	"sort"
	"time"
)

// job is a snapshot-save, snapshot-load or snapshot-delete job.
type job struct {
	id, typ string
	status  string
	err     string
	seq     int
}

type snapshotJobArgs struct {
	JobID   string   `json:"job-id"`
	Tag     string   `json:"tag"`
	VMState string   `json:"vmstate"`
	Devices []string `json:"devices"`
}

func cmdSnapshotSave(s *Server, x *call) (any, *qerr) {
	var a snapshotJobArgs
	if e := x.decode(&a, "job-id", "tag", "vmstate", "devices"); e != nil {
		return nil, e
	}
	return s.startJob(x, a, func() string { return s.saveSnapshot(a.Tag, a.VMState, a.Devices, false) })
}

func cmdSnapshotLoad(s *Server, x *call) (any, *qerr) {
	var a snapshotJobArgs
	if e := x.decode(&a, "job-id", "tag", "vmstate", "devices"); e != nil {
		return nil, e
	}
	return s.startJob(x, a, func() string { return s.loadSnapshot(a.Tag, a.VMState, a.Devices) })
}

func cmdSnapshotDelete(s *Server, x *call) (any, *qerr) {
	var a struct {
		JobID   string   `json:"job-id"`
		Tag     string   `json:"tag"`
		Devices []string `json:"devices"`
	}
	if e := x.decode(&a, "job-id", "tag", "devices"); e != nil {
		return nil, e
	}
	return s.startJob(x, snapshotJobArgs{JobID: a.JobID, Tag: a.Tag, Devices: a.Devices},
		func() string { return s.deleteSnapshot(a.Tag, a.Devices) })
}

// startJob creates a job that runs work after the reply: events
// "created" and "running" precede the reply, as in QEMU 7.2; then
// "waiting", "pending", "concluded" on success or "aborting",
// "concluded" on error. s.mu is held.
func (s *Server) startJob(x *call, a snapshotJobArgs, work func() string) (any, *qerr) {
	if _, ok := s.jobs[a.JobID]; ok {
		return nil, generic("Job ID '%s' already in use", a.JobID)
	}
	for _, d := range a.Devices {
		if e := s.matchFault(x.name, x.name, d); e != nil {
			return nil, e
		}
	}
	j := &job{id: a.JobID, typ: x.name, seq: len(s.jobOr)}
	s.jobOr = append(s.jobOr, j.id)
	s.jobs[j.id] = j
	s.setJobStatus(j, "created")
	s.setJobStatus(j, "running")
	injected, failJob := s.jobFaults[x.name]
	delete(s.jobFaults, x.name)
	x.after = append(x.after, func() {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.mu.Lock()
			defer s.mu.Unlock()
			msg := injected
			if !failJob {
				msg = work()
			}
			if msg != "" {
				j.err = msg
				s.setJobStatus(j, "aborting")
				s.setJobStatus(j, "concluded")
				return
			}
			s.setJobStatus(j, "waiting")
			s.setJobStatus(j, "pending")
			s.setJobStatus(j, "concluded")
		}()
	})
	if s.midJobDrop[x.name] {
		c := x.c
		x.after = append(x.after, func() {
			c.flush()
			c.close()
		})
	}
	return struct{}{}, nil
}

func (s *Server) setJobStatus(j *job, status string) {
	j.status = status
	s.emit("JOB_STATUS_CHANGE", map[string]string{"status": status, "id": j.id})
}

func cmdQueryJobs(s *Server, x *call) (any, *qerr) {
	if e := x.decode(nil); e != nil {
		return nil, e
	}
	var js []*job
	for _, j := range s.jobs {
		js = append(js, j)
	}
	sort.Slice(js, func(a, b int) bool { return js[a].seq < js[b].seq })
	out := []map[string]any{}
	for _, j := range js {
		cur := 0
		if j.status == "concluded" || j.status == "pending" || j.status == "waiting" || j.status == "aborting" {
			cur = 1
		}
		m := map[string]any{"current-progress": cur, "status": j.status, "total-progress": 1, "type": j.typ, "id": j.id}
		if j.err != "" {
			m["error"] = j.err
		}
		out = append(out, m)
	}
	return out, nil
}

func cmdJobDismiss(s *Server, x *call) (any, *qerr) {
	var a struct {
		ID string `json:"id"`
	}
	if e := x.decode(&a, "id"); e != nil {
		return nil, e
	}
	j, ok := s.jobs[a.ID]
	if !ok {
		return nil, generic("Job not found")
	}
	if j.status != "concluded" {
		return nil, generic("Job '%s' in state '%s' cannot accept command verb 'dismiss'", j.id, j.status)
	}
	s.setJobStatus(j, "null")
	delete(s.jobs, a.ID)
	return struct{}{}, nil
}

// snapshotTargets resolves the devices of a snapshot operation: nil means
// every disk's active image (HMP). It returns QEMU's error message.
func (s *Server) snapshotTargets(devices []string, all bool) ([]*image, []string, string) {
	if all {
		var imgs []*image
		var names []string
		for _, d := range s.blk.disks {
			imgs = append(imgs, d.active())
			names = append(names, d.active().node)
		}
		if len(imgs) == 0 {
			return nil, nil, "No block device can accept snapshots"
		}
		return imgs, names, ""
	}
	if len(devices) == 0 {
		return nil, nil, "At least one device is required for snapshot"
	}
	var imgs []*image
	for _, name := range devices {
		d, i, isFile := s.blk.find(name)
		if d == nil {
			return nil, nil, "No block device node '" + name + "'"
		}
		if isFile {
			return nil, nil, "Device '" + name + "' is writable but does not support snapshots"
		}
		imgs = append(imgs, d.chain[i])
	}
	return imgs, devices, ""
}

func vmstateImage(imgs []*image, names []string, vmstate string) *image {
	if vmstate == "" {
		return imgs[0]
	}
	for i, n := range names {
		if n == vmstate {
			return imgs[i]
		}
	}
	return nil
}

// saveSnapshot is QEMU's save_snapshot: devices nil with overwrite is HMP
// savevm. It returns an error message or "". s.mu is held.
func (s *Server) saveSnapshot(tag, vmstate string, devices []string, hmp bool) string {
	imgs, names, msg := s.snapshotTargets(devices, hmp)
	if msg != "" {
		return msg
	}
	if tag == "" {
		tag = time.Now().Format("vm-20060102150405")
	}
	if hmp {
		for _, img := range imgs {
			for sn := img.findSnapIDOrName(tag); sn != nil; sn = img.findSnapIDOrName(tag) {
				i, _ := img.findSnap(sn.ID, sn.Name)
				img.snaps = append(img.snaps[:i], img.snaps[i+1:]...)
			}
		}
	} else {
		for _, img := range imgs {
			if img.findSnapIDOrName(tag) != nil {
				return "Snapshot '" + tag + "' already exists in one or more devices"
			}
		}
	}
	vm := vmstateImage(imgs, names, vmstate)
	if vm == nil {
		return "vmstate block device '" + vmstate + "' does not exist"
	}
	wasRunning := s.status == "running"
	s.stopGuest("save-vm")
	clock := s.vmClockNsec()
	for _, img := range imgs {
		size := uint64(0)
		if img == vm {
			size = s.vmStateSize()
		}
		img.addSnap(tag, size, clock, s.counter)
	}
	// QEMU saves the VM state through the migration code, so
	// query-migrate afterwards reports a completed migration.
	if s.mig == nil || !s.mig.running() {
		s.mig = &migration{status: "completed", total: s.opts.MemoryBytes, transferred: int64(s.vmStateSize()),
			start: time.Now(), cancel: make(chan struct{})}
	}
	if wasRunning {
		s.startGuest()
	}
	return ""
}

// loadSnapshot is QEMU's snapshot-load job or HMP loadvm (devices nil):
// the guest stops first and stays stopped when loading fails. s.mu is held.
func (s *Server) loadSnapshot(tag, vmstate string, devices []string) string {
	wasRunning := s.status == "running"
	s.stopGuest("restore-vm")
	imgs, names, msg := s.snapshotTargets(devices, devices == nil)
	if msg != "" {
		return msg
	}
	snaps := make([]*snapshot, len(imgs))
	for i, img := range imgs {
		if snaps[i] = img.findSnapIDOrName(tag); snaps[i] == nil {
			return "Snapshot '" + tag + "' does not exist in one or more devices"
		}
	}
	vm := vmstateImage(imgs, names, vmstate)
	if vm == nil {
		return "vmstate block device '" + vmstate + "' does not exist"
	}
	var vmSnap *snapshot
	for i, img := range imgs {
		if img == vm {
			vmSnap = snaps[i]
		}
	}
	if vmSnap.VMStateSize == 0 {
		return "This is a disk-only snapshot. Revert to it  offline using qemu-img"
	}
	for i, img := range imgs {
		img.content = snaps[i].content
	}
	s.counter = vmSnap.counter
	if wasRunning {
		s.startGuest()
	}
	return ""
}

// deleteSnapshot is QEMU's snapshot-delete job or HMP delvm (devices
// nil); a tag missing on a device is not an error. s.mu is held.
func (s *Server) deleteSnapshot(tag string, devices []string) string {
	imgs, _, msg := s.snapshotTargets(devices, devices == nil)
	if msg != "" {
		return msg
	}
	for _, img := range imgs {
		if sn := img.findSnapIDOrName(tag); sn != nil {
			i, _ := img.findSnap(sn.ID, sn.Name)
			img.snaps = append(img.snaps[:i], img.snaps[i+1:]...)
		}
	}
	return ""
}
