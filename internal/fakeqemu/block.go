package fakeqemu

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// Snapshot is one internal snapshot of a qcow2 image, as QEMU reports it
// in query-named-block-nodes.
type Snapshot struct {
	// ID is the image-unique numeric id QEMU assigns ("1", "2", ...).
	ID string
	// Name is the snapshot tag.
	Name string
	// VMStateSize is the size of the saved VM state; 0 for a disk-only
	// snapshot.
	VMStateSize uint64
	// DateSec and DateNsec are the creation time.
	DateSec, DateNsec int64
	// VMClockNsec is the guest clock when taken (10 ms per counter tick).
	VMClockNsec int64
}

// snapshot is an internal snapshot with the state it preserves.
type snapshot struct {
	Snapshot
	hasICount bool   // made by qemu-img, which records icount 0
	content   byte   // the image's content when taken
	counter   uint64 // guest counter, meaningful when VMStateSize > 0
}

// image is one qcow2 image: a format node over a protocol node.
type image struct {
	node        string
	fileNode    string
	file        string
	backingName string // backing file name as recorded in the header
	size        int64
	ro          bool
	fileRO      bool
	overlay     bool // made by blockdev-snapshot-sync
	content     byte
	snaps       []*snapshot
}

// disk is a device with its chain of images, active image first.
type disk struct {
	device string
	chain  []*image
}

func (d *disk) active() *image { return d.chain[0] }

// blockState is the block graph; transactions work on a copy.
type blockState struct {
	disks   []*disk
	created []*image // creation order
	nodeSeq int
}

func (b *blockState) autoNode() string {
	b.nodeSeq += 17
	return fmt.Sprintf("#block%03d", b.nodeSeq)
}

func (b *blockState) addDisk(d Disk) {
	size := d.VirtualSize
	if size == 0 {
		size = 1 << 30
	}
	fileNode := d.FileNode
	if fileNode == "" {
		fileNode = b.autoNode()
	}
	top := &image{node: d.Node, fileNode: fileNode, file: d.File, size: size}
	dk := &disk{device: d.Device, chain: []*image{top}}
	b.created = append(b.created, top)
	prev := top
	for _, name := range d.Backing {
		prev.backingName = name
		img := &image{node: b.autoNode(), fileNode: b.autoNode(), file: fullPath(prev.file, name), size: size, ro: true, fileRO: true}
		dk.chain = append(dk.chain, img)
		b.created = append(b.created, img)
		prev = img
	}
	b.disks = append(b.disks, dk)
}

// fullPath resolves a backing file name against the image that names it.
func fullPath(of, name string) string {
	if filepath.IsAbs(name) {
		return name
	}
	return filepath.Join(filepath.Dir(of), name)
}

func (b *blockState) clone() *blockState {
	m := map[*image]*image{}
	cp := func(i *image) *image {
		if n, ok := m[i]; ok {
			return n
		}
		n := *i
		n.snaps = nil
		for _, sn := range i.snaps {
			c := *sn
			n.snaps = append(n.snaps, &c)
		}
		m[i] = &n
		return &n
	}
	nb := &blockState{nodeSeq: b.nodeSeq}
	for _, d := range b.disks {
		nd := &disk{device: d.device}
		for _, i := range d.chain {
			nd.chain = append(nd.chain, cp(i))
		}
		nb.disks = append(nb.disks, nd)
	}
	for _, i := range b.created {
		nb.created = append(nb.created, cp(i))
	}
	return nb
}

// find returns the image having node as its format or protocol node name.
func (b *blockState) find(node string) (d *disk, idx int, isFile bool) {
	for _, dk := range b.disks {
		for i, img := range dk.chain {
			if img.node == node {
				return dk, i, false
			}
			if img.fileNode == node {
				return dk, i, true
			}
		}
	}
	return nil, -1, false
}

// root resolves a device-or-node argument to a disk whose active format
// node it names, with QEMU's errors.
func (b *blockState) root(name string) (*disk, *qerr) {
	d, idx, isFile := b.find(name)
	if d == nil {
		return nil, generic("Cannot find device='%s' nor node-name='%s'", name, name)
	}
	if idx != 0 || isFile {
		return nil, generic("Need a root block node")
	}
	return d, nil
}

func (b *blockState) nodeInUse(name string) bool {
	d, _, _ := b.find(name)
	return d != nil
}

func (img *image) findSnap(id, name string) (int, *snapshot) {
	for i, sn := range img.snaps {
		if (id == "" || sn.ID == id) && (name == "" || sn.Name == name) {
			return i, sn
		}
	}
	return -1, nil
}

// findSnapIDOrName finds a snapshot by name, or else by id, as QEMU's
// bdrv_snapshot_find does for savevm/loadvm tags.
func (img *image) findSnapIDOrName(tag string) *snapshot {
	if _, sn := img.findSnap("", tag); sn != nil {
		return sn
	}
	_, sn := img.findSnap(tag, "")
	return sn
}

func (img *image) nextID() string {
	max := 0
	for _, sn := range img.snaps {
		if n, err := strconv.Atoi(sn.ID); err == nil && n > max {
			max = n
		}
	}
	return strconv.Itoa(max + 1)
}

func (img *image) addSnap(name string, vmState uint64, vmClock int64, counter uint64) *snapshot {
	now := time.Now()
	sn := &snapshot{
		Snapshot: Snapshot{
			ID: img.nextID(), Name: name, VMStateSize: vmState,
			DateSec: now.Unix(), DateNsec: int64(now.Nanosecond()/1000) * 1000, VMClockNsec: vmClock,
		},
		content: img.content,
		counter: counter,
	}
	img.snaps = append(img.snaps, sn)
	return sn
}

func snapshotInfo(sn *snapshot) map[string]any {
	m := map[string]any{
		"id":            sn.ID,
		"name":          sn.Name,
		"vm-state-size": sn.VMStateSize,
		"date-sec":      sn.DateSec,
		"date-nsec":     sn.DateNsec,
		"vm-clock-sec":  sn.VMClockNsec / 1e9,
		"vm-clock-nsec": sn.VMClockNsec % 1e9,
	}
	if sn.hasICount {
		m["icount"] = 0
	}
	return m
}

func qcow2Specific() map[string]any {
	return map[string]any{"type": "qcow2", "data": map[string]any{
		"compat": "1.1", "compression-type": "zlib", "lazy-refcounts": false,
		"refcount-bits": 16, "corrupt": false, "extended-l2": false,
	}}
}

// imageInfo is the qcow2 ImageInfo of chain[i]; withBacking nests the
// backing chain as "backing-image".
func imageInfo(chain []*image, i int, withBacking bool) map[string]any {
	img := chain[i]
	m := map[string]any{
		"virtual-size":    img.size,
		"filename":        img.file,
		"cluster-size":    65536,
		"format":          "qcow2",
		"actual-size":     200704,
		"format-specific": qcow2Specific(),
		"dirty-flag":      false,
	}
	if len(img.snaps) > 0 {
		var l []map[string]any
		for _, sn := range img.snaps {
			l = append(l, snapshotInfo(sn))
		}
		m["snapshots"] = l
	}
	if i+1 < len(chain) {
		m["backing-filename-format"] = "qcow2"
		m["backing-filename"] = img.backingName
		m["full-backing-filename"] = chain[i+1].file
		if withBacking {
			m["backing-image"] = imageInfo(chain, i+1, true)
		}
	}
	return m
}

func deviceInfo(node, file string, ro bool, drv string, image map[string]any, depth int, backing string, writeback bool) map[string]any {
	m := map[string]any{
		"iops_rd": 0, "detect_zeroes": "off", "image": image, "iops_wr": 0,
		"ro": ro, "node-name": node, "backing_file_depth": depth, "drv": drv,
		"iops": 0, "bps_wr": 0, "write_threshold": 0, "encrypted": false,
		"bps": 0, "bps_rd": 0,
		"cache": map[string]bool{"no-flush": false, "direct": false, "writeback": writeback},
		"file":  file,
	}
	if backing != "" {
		m["backing_file"] = backing
	}
	return m
}

// formatNodeInfo is the BlockDeviceInfo of chain[i]'s qcow2 node.
func formatNodeInfo(chain []*image, i int, flat, writeback bool) map[string]any {
	img := chain[i]
	depth, backing := 0, ""
	if i+1 < len(chain) {
		backing = chain[i+1].file
		if !flat {
			depth = len(chain) - 1 - i
		}
	}
	return deviceInfo(img.node, img.file, img.ro, "qcow2", imageInfo(chain, i, !flat), depth, backing, writeback)
}

func fileNodeInfo(img *image) map[string]any {
	info := map[string]any{
		"virtual-size": 197120, "filename": img.file, "format": "file",
		"actual-size": 200704, "dirty-flag": false,
	}
	return deviceInfo(img.fileNode, img.file, img.fileRO, "file", info, 0, "", true)
}

func cmdQueryNamedBlockNodes(s *Server, x *call) (any, *qerr) {
	var a struct {
		Flat bool `json:"flat"`
	}
	if e := x.decode(&a); e != nil {
		return nil, e
	}
	out := []map[string]any{}
	b := s.blk
	for i := len(b.created) - 1; i >= 0; i-- {
		img := b.created[i]
		d, idx, _ := b.find(img.node)
		out = append(out, formatNodeInfo(d.chain, idx, a.Flat, true), fileNodeInfo(img))
	}
	return out, nil
}

func cmdQueryBlock(s *Server, x *call) (any, *qerr) {
	if e := x.decode(nil); e != nil {
		return nil, e
	}
	out := []map[string]any{}
	for n, d := range s.blk.disks {
		qdev := fmt.Sprintf("/machine/peripheral-anon/device[%d]/virtio-backend", n)
		if d.device != "" {
			qdev = "/machine/peripheral/" + d.device + "/virtio-backend"
		}
		out = append(out, map[string]any{
			"io-status": "ok", "device": "", "locked": false, "removable": false,
			// QEMU 7.2 reports writeback off for the images given on
			// the command line and on for overlays it opened itself.
			"inserted": formatNodeInfo(d.chain, 0, false, d.active().overlay),
			"qdev":     qdev, "type": "unknown",
		})
	}
	return out, nil
}

// internalSnapshot is blockdev-snapshot-internal-sync on b.
func (s *Server) internalSnapshot(b *blockState, device, name string) *qerr {
	d, e := b.root(device)
	if e != nil {
		return e
	}
	if name == "" {
		return generic("Name is empty")
	}
	img := d.active()
	if _, sn := img.findSnap("", name); sn != nil {
		return generic("Snapshot with name '%s' already exists on device '%s'", name, device)
	}
	img.addSnap(name, 0, s.vmClockNsec(), 0)
	return nil
}

type internalSnapshotArgs struct {
	Device string `json:"device"`
	Name   string `json:"name"`
}

func cmdInternalSnapshot(s *Server, x *call) (any, *qerr) {
	var a internalSnapshotArgs
	if e := x.decode(&a, "device", "name"); e != nil {
		return nil, e
	}
	if e := s.matchFault(x.name, x.name, a.Device); e != nil {
		return nil, e
	}
	if e := s.internalSnapshot(s.blk, a.Device, a.Name); e != nil {
		return nil, e
	}
	return struct{}{}, nil
}

func cmdDeleteInternalSnapshot(s *Server, x *call) (any, *qerr) {
	var a struct {
		Device string  `json:"device"`
		ID     *string `json:"id"`
		Name   *string `json:"name"`
	}
	if e := x.decode(&a, "device"); e != nil {
		return nil, e
	}
	if e := s.matchFault(x.name, x.name, a.Device); e != nil {
		return nil, e
	}
	d, e := s.blk.root(a.Device)
	if e != nil {
		return nil, e
	}
	if a.ID == nil && a.Name == nil {
		return nil, generic("Name or id must be provided")
	}
	id, name := "", ""
	idS, nameS := "null", "null"
	if a.ID != nil {
		id, idS = *a.ID, *a.ID
	}
	if a.Name != nil {
		name, nameS = *a.Name, *a.Name
	}
	img := d.active()
	i, sn := img.findSnap(id, name)
	if sn == nil {
		return nil, generic("Snapshot with id '%s' and name '%s' does not exist on device '%s'", idS, nameS, a.Device)
	}
	img.snaps = append(img.snaps[:i], img.snaps[i+1:]...)
	return snapshotInfo(sn), nil
}

type externalSnapshotArgs struct {
	Device           *string `json:"device"`
	NodeName         *string `json:"node-name"`
	SnapshotFile     string  `json:"snapshot-file"`
	SnapshotNodeName *string `json:"snapshot-node-name"`
	Format           string  `json:"format"`
	Mode             string  `json:"mode"`
}

// target is the device or node the action names.
func (a externalSnapshotArgs) target() string {
	if a.NodeName != nil {
		return *a.NodeName
	}
	if a.Device != nil {
		return *a.Device
	}
	return ""
}

// externalSnapshot is blockdev-snapshot-sync on b. The fake knows no
// BlockBackend names (disks are attached with -blockdev), so "device"
// never matches, as with real QEMU configured that way.
func (s *Server) externalSnapshot(b *blockState, a externalSnapshotArgs) *qerr {
	dev, node := "", ""
	if a.Device != nil {
		dev = *a.Device
	}
	if a.NodeName != nil {
		node = *a.NodeName
	}
	var d *disk
	if node != "" {
		d, _, _ = b.find(node)
	}
	if d == nil {
		return generic("Cannot find device='%s' nor node-name='%s'", dev, node)
	}
	if _, e := b.root(node); e != nil {
		return e
	}
	if a.SnapshotNodeName == nil || *a.SnapshotNodeName == "" {
		return generic("New overlay node-name missing")
	}
	if b.nodeInUse(*a.SnapshotNodeName) {
		return generic("New overlay node-name already in use")
	}
	if a.Format != "" && a.Format != "qcow2" {
		return generic("fakeqemu simulates qcow2 overlays only, not format '%s'", a.Format)
	}
	switch a.Mode {
	case "", "absolute-paths":
	case "existing":
		// QEMU opens the overlay the caller made; it must be there.
		if _, err := os.Stat(a.SnapshotFile); err != nil {
			return generic("Could not open '%s': No such file or directory", a.SnapshotFile)
		}
	default:
		return generic("Parameter 'mode' does not accept value '%s'", a.Mode)
	}
	old := d.active()
	if a.SnapshotFile == old.file {
		return generic("Error: Trying to create an image with the same filename as the backing file")
	}
	ov := &image{
		node: *a.SnapshotNodeName, fileNode: b.autoNode(), file: a.SnapshotFile,
		backingName: old.file, size: old.size, content: old.content, overlay: true,
	}
	old.ro = true
	d.chain = append([]*image{ov}, d.chain...)
	b.created = append(b.created, ov)
	return nil
}

func cmdExternalSnapshot(s *Server, x *call) (any, *qerr) {
	var a externalSnapshotArgs
	if e := x.decode(&a, "snapshot-file"); e != nil {
		return nil, e
	}
	if e := s.matchFault(x.name, x.name, a.target()); e != nil {
		return nil, e
	}
	if e := s.externalSnapshot(s.blk, a); e != nil {
		return nil, e
	}
	if e := s.createOverlayFiles([]string{a.SnapshotFile}); e != nil {
		return nil, e
	}
	return struct{}{}, nil
}
