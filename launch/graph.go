package launch

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// The block graph of a command line: what -drive, -hdX, -pflash, -blockdev,
// -device and -machine pflashN= declare, parsed instead of searched for
// paths, so a relaunch can put a disk on a new image with the right format
// and backing chain (see rewriteDisk).

// blockArg is one -drive, -blockdev or -device option of the argv.
type blockArg struct {
	at   int    // index of the option word in argv; its value is at+1
	flag string // "drive", "blockdev", "device", or a short form: "hda", "pflash", …
	opts *optTree
	// deleted marks a -blockdev that a rewrite removed.
	deleted bool
	// inserted are -blockdev options a rewrite puts before this one.
	inserted []*blockArg
	changed  bool
}

// drive is a -drive (or -hda … -hdd, -cdrom, -pflash) disk.
type drive struct {
	*blockArg
	name string // block backend name: id= or the name QEMU makes from if=/index
	// flash is the unit of an if=pflash drive, -1 for other drives.
	flash int
}

// blockGraph is the parsed block configuration of an argv.
type blockGraph struct {
	argv    []string
	dir     string // the directory relative image paths start from
	drives  []*drive
	nodes   []*blockArg          // -blockdev
	byName  map[string]*blockArg // -blockdev by node-name
	devices []*blockArg          // -device with a drive= property
	// pflash maps a -machine pflashN= value to N's index.
	pflash map[string]string
}

// shortDrive is what -hda and friends mean as -drive options.
var shortDrive = map[string]struct{ iface, index, media string }{
	"hda":    {"ide", "0", "disk"},
	"hdb":    {"ide", "1", "disk"},
	"hdc":    {"ide", "2", "disk"},
	"hdd":    {"ide", "3", "disk"},
	"cdrom":  {"ide", "2", "cdrom"},
	"fda":    {"floppy", "0", "disk"},
	"fdb":    {"floppy", "1", "disk"},
	"pflash": {"pflash", "", "disk"},
}

// Units per bus of the interfaces QEMU names "<if><bus>-<media><unit>".
var unitsPerBus = map[string]int{"ide": 2, "scsi": 7}

// parseBlockGraph parses argv (argv[0] is the binary).
func parseBlockGraph(argv []string) (*blockGraph, error) {
	g := &blockGraph{argv: argv, byName: map[string]*blockArg{}, pflash: map[string]string{}}
	used := map[string]bool{} // "if/bus/unit" taken, for drives without index
	for i := 1; i < len(argv); i++ {
		w := argv[i]
		if !strings.HasPrefix(w, "-") || i+1 >= len(argv) {
			continue
		}
		flag := strings.TrimPrefix(strings.TrimPrefix(w, "-"), "-")
		val := argv[i+1]
		switch flag {
		case "drive", "blockdev", "device", "machine", "M":
		default:
			sd, ok := shortDrive[flag]
			if !ok {
				continue
			}
			o := &optTree{}
			o.setStr("file", val)
			if sd.index != "" {
				o.setStr("index", sd.index)
			}
			o.setStr("if", sd.iface)
			o.setStr("media", sd.media)
			d := &drive{blockArg: &blockArg{at: i, flag: flag, opts: o}}
			d.name, d.flash = driveName(o, used)
			g.drives = append(g.drives, d)
			i++
			continue
		}
		i++
		if flag == "machine" || flag == "M" {
			for _, p := range optionPieces(val) {
				if k, v, ok := strings.Cut(p, "="); ok && strings.HasPrefix(k, "pflash") {
					g.pflash[unescapeOptionValue(v)] = k
				}
			}
			continue
		}
		o, err := parseOptions(val)
		if err != nil {
			return nil, fmt.Errorf("-%s %s: %w", flag, val, err)
		}
		a := &blockArg{at: i - 1, flag: flag, opts: o}
		switch flag {
		case "drive":
			d := &drive{blockArg: a}
			d.name, d.flash = driveName(o, used)
			g.drives = append(g.drives, d)
		case "blockdev":
			name, _ := o.str("node-name")
			if name == "" {
				return nil, fmt.Errorf("%w: -blockdev %s has no node-name", ErrSyntax, val)
			}
			g.nodes = append(g.nodes, a)
			g.byName[name] = a
		case "device":
			if !o.json && len(o.members) > 0 && o.members[0].bare {
				o.members[0] = &optMember{key: "driver", s: o.members[0].key}
			}
			if _, ok := o.str("drive"); ok {
				g.devices = append(g.devices, a)
			}
		}
	}
	return g, nil
}

// driveName is the block backend name QEMU gives a -drive: its id, else
// one made from its interface and position ("ide0-hd0", "virtio1",
// "pflash0"). used records the positions taken so far. flash is the unit
// of an if=pflash drive (the N of the machine's pflashN), -1 for others.
func driveName(o *optTree, used map[string]bool) (name string, flash int) {
	iface, ok := o.str("if")
	if !ok {
		iface = "ide"
	}
	media, _ := o.str("media")
	bus, unit := 0, -1
	if s, ok := o.str("bus"); ok {
		bus, _ = strconv.Atoi(s)
	}
	if s, ok := o.str("unit"); ok {
		unit, _ = strconv.Atoi(s)
	}
	max := unitsPerBus[iface]
	if s, ok := o.str("index"); ok {
		idx, _ := strconv.Atoi(s)
		if max > 0 {
			bus, unit = idx/max, idx%max
		} else {
			bus, unit = 0, idx
		}
	}
	if unit < 0 {
		unit = 0
		for used[fmt.Sprint(iface, "/", bus, "/", unit)] {
			unit++
		}
	}
	used[fmt.Sprint(iface, "/", bus, "/", unit)] = true
	flash = -1
	if iface == "pflash" {
		flash = unit
	}
	if id, ok := o.str("id"); ok && id != "" {
		return id, flash
	}
	if iface == "none" {
		return "", flash
	}
	mediaStr := ""
	if iface == "ide" || iface == "scsi" {
		mediaStr = "-hd"
		if media == "cdrom" {
			mediaStr = "-cd"
		}
	}
	if max > 0 {
		return fmt.Sprintf("%s%d%s%d", iface, bus, mediaStr, unit), flash
	}
	return fmt.Sprintf("%s%s%d", iface, mediaStr, unit), flash
}

// flashNames are the names query-block gives the machine's flash device
// pflashN: a -drive if=pflash's block backend is "pflashN" (or its id=),
// and the device is /machine/system.flashN whether a -drive or -machine
// pflashN=<node> gives it its image; a -blockdev flash has no backend
// name, so vmsnap knows it by "system.flashN", the last part of that qdev
// path, and keeps that name after an external snapshot put the disk on an
// overlay node the command line does not declare.
func flashNames(n int) []string {
	return []string{fmt.Sprintf("pflash%d", n), fmt.Sprintf("system.flash%d", n), fmt.Sprintf("/machine/system.flash%d", n)}
}

// Drivers by role in a block graph.
var (
	filterDrivers = map[string]bool{"throttle": true, "copy-on-read": true, "preallocate": true, "compress": true, "blklogwrites": true, "blkdebug": true, "blkverify": true, "snapshot-access": true}
	formatDrivers = map[string]bool{"raw": true, "qcow2": true, "qcow": true, "qed": true, "vmdk": true, "vdi": true, "vpc": true, "vhdx": true, "parallels": true, "luks": true, "bochs": true, "cloop": true, "dmg": true}
	// fileDrivers are the protocol drivers whose image a rewrite can
	// replace by a local file.
	fileDrivers = map[string]bool{"file": true, "host_device": true}
)

// formatOnly are options that belong to one image format (or to one
// image) and do not carry over to an overlay of another format.
var formatOnly = []string{"offset", "size", "lazy-refcounts", "pass-discard-request", "pass-discard-snapshot", "pass-discard-other", "overlap-check", "cache-size", "l2-cache-size", "l2-cache-entry-size", "refcount-cache-size", "cache-clean-interval", "data-file", "data-file-raw", "encrypt", "discard-no-unref", "key-secret"}

// disk is one disk of the command line: a -drive, or the -blockdev node a
// device (or -machine pflashN=) uses.
type disk struct {
	drive *drive
	// top is the -blockdev node a device refers to; format the format
	// node under top's filters (nil when top is a protocol node itself).
	top, format *blockArg
	// names are the names vmsnap may know the disk by: backend name, qdev
	// ids, node names.
	names []string
}

// label names the disk in errors.
func (d *disk) label() string {
	if len(d.names) > 0 {
		return d.names[0]
	}
	return "?"
}

// disks lists the command line's disks.
func (g *blockGraph) disks() []*disk {
	var out []*disk
	byTop := map[*blockArg]*disk{}
	for _, dr := range g.drives {
		d := &disk{drive: dr}
		if dr.name != "" {
			d.names = append(d.names, dr.name)
		}
		if nn, ok := dr.opts.str("node-name"); ok {
			d.names = append(d.names, nn)
		}
		if dr.flash >= 0 {
			for _, n := range flashNames(dr.flash) {
				if !slices.Contains(d.names, n) {
					d.names = append(d.names, n)
				}
			}
		}
		out = append(out, d)
	}
	addNode := func(ref string) *disk {
		n := g.byName[ref]
		if n == nil {
			return nil
		}
		if d := byTop[n]; d != nil {
			return d
		}
		d := &disk{top: n, names: []string{ref}}
		for cur := n; cur != nil; {
			drv, _ := cur.opts.str("driver")
			if !filterDrivers[drv] {
				if formatDrivers[drv] {
					d.format = cur
				}
				break
			}
			name, _ := cur.opts.str("file")
			cur = g.byName[name]
			if cur != nil {
				nn, _ := cur.opts.str("node-name")
				d.names = append(d.names, nn)
			}
		}
		byTop[n] = d
		out = append(out, d)
		return d
	}
	for _, dev := range g.devices {
		ref, _ := dev.opts.str("drive")
		id, _ := dev.opts.str("id")
		if d := addNode(ref); d != nil && id != "" {
			d.names = append([]string{id}, d.names...)
			continue
		}
		for _, dr := range out {
			if dr.drive != nil && (dr.drive.name == ref || slices.Contains(dr.names, ref)) && id != "" {
				dr.names = append(dr.names, id)
			}
		}
	}
	for ref, pf := range g.pflash {
		n, err := strconv.Atoi(strings.TrimPrefix(pf, "pflash"))
		if d := addNode(ref); d != nil && err == nil {
			d.names = append(d.names, flashNames(n)...)
		}
	}
	return out
}

// chainElem is one image of a disk's chain as the command line declares it.
type chainElem struct {
	fmt    *optTree   // the format node's options (a -blockdev or inline)
	node   *blockArg  // the -blockdev holding fmt, nil when inline
	proto  *optTree   // its protocol node's options
	pnode  *blockArg  // the -blockdev holding proto, nil when inline
	file   string     // proto's filename
	format string     // fmt's driver
	parent *chainElem // the element whose backing this is
}

// childOf resolves a child reference: a node name or an inline object.
func (g *blockGraph) childOf(o *optTree, key string) (*optTree, *blockArg) {
	if sub := o.child(key); sub != nil {
		return sub, nil
	}
	if name, ok := o.str(key); ok && !o.isNull(key) {
		if n := g.byName[name]; n != nil {
			return n.opts, n
		}
	}
	return nil, nil
}

// chain lists the images of the -blockdev disk d, top first, as far as
// the command line names them (a format node without "backing" lets QEMU
// open the rest from the image headers).
func (g *blockGraph) chain(d *disk) []*chainElem {
	var out []*chainElem
	o, n := d.format.opts, d.format
	var parent *chainElem
	for o != nil && len(out) < 64 {
		e := &chainElem{fmt: o, node: n, parent: parent}
		e.format, _ = o.str("driver")
		e.proto, e.pnode = g.childOf(o, "file")
		if e.proto != nil {
			e.file, _ = e.proto.str("filename")
		}
		out = append(out, e)
		parent = e
		o, n = g.childOf(o, "backing")
	}
	return out
}

// file returns the path of d's top image in the command line.
func (g *blockGraph) file(d *disk) string {
	if d.drive != nil {
		if f, ok := d.drive.opts.str("file"); ok {
			return f
		}
		if sub := d.drive.opts.child("file"); sub != nil {
			f, _ := sub.str("filename")
			return f
		}
		return ""
	}
	if d.format == nil {
		f, _ := d.protocol().str("filename")
		return f
	}
	if c := g.chain(d); len(c) > 0 {
		return c[0].file
	}
	return ""
}

// protocol returns the node a -blockdev disk without a format node
// uses: its top.
func (d *disk) protocol() *optTree { return d.top.opts }

// files lists every image path of d the command line names, top first.
func (g *blockGraph) files(d *disk) []string {
	if d.drive != nil || d.format == nil {
		return []string{g.file(d)}
	}
	var out []string
	for _, e := range g.chain(d) {
		out = append(out, e.file)
	}
	return out
}

// find returns the disk known by one of names, or whose command line
// image is path.
func (g *blockGraph) find(names []string, path string) (*disk, error) {
	var found *disk
	for _, d := range g.disks() {
		hit := false
		for _, n := range names {
			if n != "" && slices.Contains(d.names, n) {
				hit = true
			}
		}
		if hit {
			if found != nil && found != d {
				return nil, fmt.Errorf("%q names two disks of the command line (%s and %s)", names, found.label(), d.label())
			}
			found = d
		}
	}
	if found != nil || path == "" {
		return found, nil
	}
	for _, d := range g.disks() {
		if slices.Contains(g.files(d), path) {
			if found != nil {
				return nil, fmt.Errorf("image %s appears in two disks of the command line (%s and %s)", path, found.label(), d.label())
			}
			found = d
		}
	}
	return found, nil
}

// referenced reports whether some option of the argv other than skip
// refers to the node name.
func (g *blockGraph) referenced(name string, skip *blockArg) bool {
	var inTree func(o *optTree) bool
	inTree = func(o *optTree) bool {
		for _, m := range o.members {
			if m.sub != nil {
				if inTree(m.sub) {
					return true
				}
				continue
			}
			if m.key == "node-name" {
				continue
			}
			if s, ok := o.str(m.key); ok && s == name {
				return true
			}
		}
		return false
	}
	for _, n := range g.nodes {
		if n != skip && !n.deleted && inTree(n.opts) {
			return true
		}
		for _, ins := range n.inserted {
			if inTree(ins.opts) {
				return true
			}
		}
	}
	for _, dev := range g.devices {
		if inTree(dev.opts) {
			return true
		}
	}
	if _, ok := g.pflash[name]; ok {
		return true
	}
	for i, w := range g.argv {
		if i == 0 || !strings.HasPrefix(g.argv[i-1], "-") {
			continue
		}
		switch strings.TrimLeft(g.argv[i-1], "-") {
		case "blockdev", "device", "drive", "machine", "M":
			continue
		}
		for _, p := range optionPieces(w) {
			if _, v, ok := strings.Cut(p, "="); ok && unescapeOptionValue(v) == name {
				return true
			}
		}
	}
	return false
}

// freeName returns a node name derived from base that no option of the
// argv uses, at most 31 bytes long as QEMU requires.
func (g *blockGraph) freeName(base, suffix string) string {
	taken := func(n string) bool {
		if g.byName[n] != nil {
			return true
		}
		for _, d := range g.drives {
			if d.name == n {
				return true
			}
		}
		return false
	}
	for i := 0; ; i++ {
		s := suffix
		if i > 0 {
			s += strconv.Itoa(i)
		}
		b := base
		if len(b)+len(s) > 31 {
			b = b[:31-len(s)]
		}
		if !taken(b + s) {
			return b + s
		}
	}
}

// addNode registers a -blockdev a rewrite creates, inserted before at.
func (g *blockGraph) addNode(at *blockArg, o *optTree) *blockArg {
	a := &blockArg{flag: "blockdev", opts: o}
	name, _ := o.str("node-name")
	g.byName[name] = a
	at.inserted = append(at.inserted, a)
	return a
}

// build writes the argv back with the rewritten options.
func (g *blockGraph) build() []string {
	args := map[int]*blockArg{}
	for _, d := range g.drives {
		args[d.at] = d.blockArg
	}
	for _, n := range g.nodes {
		args[n.at] = n
	}
	out := make([]string, 0, len(g.argv))
	for i := 0; i < len(g.argv); i++ {
		a := args[i]
		if a == nil || i == 0 {
			out = append(out, g.argv[i])
			continue
		}
		for _, ins := range a.inserted {
			out = append(out, "-blockdev", ins.opts.String())
		}
		switch {
		case a.deleted:
		case !a.changed:
			out = append(out, g.argv[i], g.argv[i+1])
		case a.flag == "drive" || a.flag == "blockdev":
			out = append(out, g.argv[i], a.opts.String())
		default: // a short form became a -drive
			out = append(out, "-drive", a.opts.String())
		}
		i++
	}
	return out
}

// image is what a rewrite needs to know about a disk's new top image.
type image struct {
	File          string
	Format        string
	Backing       string // absolute path, "" when none
	BackingFormat string
	Device        bool // a block device, not a regular file
	// Below are the images of the backing chain, Backing first, each as
	// its overlay's header names it (absolute); the last names no backing
	// file. Empty when unknown.
	Below []string
}

// headerBacking reports whether the header of file, an image of img's
// backing chain, names a backing file; known is false when file is not
// in the chain qemu-img reported.
func (img image) headerBacking(file string) (has, known bool) {
	for i, f := range img.Below {
		if f == file {
			return i+1 < len(img.Below), true
		}
	}
	return false, false
}

// dropNullBacking removes "backing" from the key=value format nodes of o
// (o and the backing objects declared inline in it) that set it to null
// although their image names no backing file in its header: the two mean
// the same there, and QEMU 7.2 warns that "backing=", key=value syntax's
// only spelling of null, is deprecated. A null backing that hides a
// backing file the header names, or one on an image whose header is not
// known, is kept. JSON options keep their null, which is not deprecated.
func (g *blockGraph) dropNullBacking(o *optTree, img image) {
	for ; o != nil && !o.json; o = o.child("backing") {
		if !o.isNull("backing") {
			continue
		}
		proto, _ := g.childOf(o, "file")
		if proto == nil {
			return
		}
		f, _ := proto.str("filename")
		if has, known := img.headerBacking(g.abs(f)); known && !has {
			o.remove("backing")
		}
		return
	}
}

// checkRewrite reports whether rewriteDisk can put d on a new image.
func (g *blockGraph) checkRewrite(d *disk) error {
	if d.drive != nil {
		o := d.drive.opts
		f := g.file(d)
		switch {
		case f == "":
			return fmt.Errorf("its -drive has no file=")
		case strings.HasPrefix(f, "json:"):
			return fmt.Errorf("its -drive names a json: pseudo-file; give the image as file=PATH")
		case isOn(o, "snapshot"):
			return fmt.Errorf("its -drive has snapshot=on: QEMU writes to a temporary overlay that vanishes")
		}
		if sub := o.child("file"); sub != nil {
			if drv, ok := sub.str("driver"); ok && !fileDrivers[drv] {
				return fmt.Errorf("its image is opened with the %s protocol, not a local file", drv)
			}
		}
		return nil
	}
	var proto *optTree
	if d.format == nil {
		proto = d.protocol()
		if drv, _ := proto.str("driver"); filterDrivers[drv] {
			return fmt.Errorf("its -blockdev filter %s sits on no format node", drv)
		}
	} else {
		c := g.chain(d)
		if c[0].proto == nil {
			return fmt.Errorf("its format node %s has no file child the command line declares", c[0].format)
		}
		if c[0].node == nil {
			return fmt.Errorf("its format node is declared inline, without a node name")
		}
		proto = c[0].proto
	}
	if drv, _ := proto.str("driver"); !fileDrivers[drv] {
		return fmt.Errorf("its image is opened with the %s protocol, not a local file", drv)
	}
	return nil
}

func isOn(o *optTree, key string) bool {
	v, ok := o.str(key)
	return ok && (v == "on" || v == "true" || v == "yes")
}

// rewriteDisk puts d on img: the command line then opens img with its
// format and its backing chain. It reports whether anything changed.
//
// For a -drive, file= becomes img and format= img's format; options of
// the old format and any backing.* options are dropped, so QEMU opens the
// backing chain from img's header (its backing file and format, which
// vmsnap's overlays record). A short form (-hda) becomes a -drive with
// the same index.
//
// For a -blockdev disk the node names stay with the disk's top: the
// format node the device uses becomes img's format node and its file node
// opens img, so device references, -machine pflashN= and vmsnap's node
// name stay valid. The image below is kept as the command line declared
// it: when img's backing file is the disk's old top image, that format
// node and its file node are declared again under new names ("…-base")
// and become img's backing (with the options they had: not forced
// read-only, since QEMU 7.2 refuses block-commit into a node declared
// read-only=on, "Block node is read-only"; a backing node is only read
// unless a job writes to it); when it is an image further down the declared
// chain, that node becomes the backing. Otherwise "backing" is left out
// and QEMU opens the chain from img's header. Declared nodes that nothing
// refers to any more are dropped. A key=value node written again loses a
// null backing ("backing=", deprecated in QEMU 7.2) when its image's
// header names no backing file (see dropNullBacking).
func (g *blockGraph) rewriteDisk(d *disk, img image) (bool, error) {
	if img.File == g.file(d) {
		return false, nil
	}
	if err := g.checkRewrite(d); err != nil {
		return false, err
	}
	if d.drive != nil {
		g.rewriteDrive(d.drive, img)
		return true, nil
	}
	if d.format == nil {
		// A device on a bare protocol node: give it a raw format node
		// of the same name over a renamed copy of the protocol node.
		top := d.top
		name, _ := top.opts.str("node-name")
		p := top.opts.clone()
		p.setStr("node-name", g.freeName(name, "-storage"))
		g.addNode(top, p)
		pname, _ := p.str("node-name")
		f := &optTree{json: top.opts.json}
		f.setStr("node-name", name)
		f.setStr("driver", "raw")
		for _, k := range []string{"read-only", "discard", "detect-zeroes", "cache", "force-share"} {
			if m := top.opts.member(k); m != nil {
				cm := *m
				f.members = append(f.members, &cm)
				if k == "read-only" || k == "cache" {
					p.remove(k)
				}
			}
		}
		f.setStr("file", pname)
		top.opts, top.changed = f, true
		d.format = top
	}
	c := g.chain(d)
	top := c[0]
	match := -1
	for i, e := range c {
		if img.Backing != "" && g.abs(e.file) == img.Backing && (img.BackingFormat == "" || e.format == img.BackingFormat) {
			match = i
			break
		}
	}
	// What the old chain held that may become unreferenced.
	var stale []*blockArg
	for i, e := range c {
		if i == 0 || (match >= 0 && i >= match) {
			continue
		}
		if e.node != nil {
			stale = append(stale, e.node)
		}
		if e.pnode != nil {
			stale = append(stale, e.pnode)
		}
	}
	name, _ := top.fmt.str("node-name")
	newTop := top.fmt.clone()
	switch {
	case match == 0:
		// The old top becomes the backing: declare it again, renamed.
		base := top.fmt.clone()
		base.setStr("node-name", g.freeName(name, "-base"))
		if top.pnode != nil {
			pname, _ := top.proto.str("node-name")
			p := top.proto.clone()
			p.setStr("node-name", g.freeName(pname, "-base"))
			g.addNode(top.node, p)
			nn, _ := p.str("node-name")
			base.setStr("file", nn)
		}
		g.dropNullBacking(base, img)
		g.addNode(top.node, base)
		bn, _ := base.str("node-name")
		newTop.setStr("backing", bn)
	case match > 0:
		b := c[match]
		if b.node != nil {
			bn, _ := b.fmt.str("node-name")
			newTop.setStr("backing", bn)
		} else {
			inline := b.fmt.clone()
			g.dropNullBacking(inline, img)
			newTop.setSub("backing", inline)
		}
	default:
		newTop.remove("backing")
	}
	if top.format != img.Format {
		for _, k := range formatOnly {
			newTop.remove(k)
		}
		newTop.setStr("driver", img.Format)
	}
	newTop.remove("data-file")
	newTop.remove("encrypt")
	// The file node opens img.
	var proto *optTree
	if top.pnode != nil {
		proto = top.proto.clone()
		top.pnode.opts, top.pnode.changed = proto, true
	} else {
		proto = newTop.child("file")
	}
	proto.setStr("filename", img.File)
	if img.Device {
		proto.setStr("driver", "host_device")
	} else {
		proto.setStr("driver", "file")
	}
	top.node.opts, top.node.changed = newTop, true
	// Drop declared nodes nothing refers to any more.
	for again := true; again; {
		again = false
		for _, n := range stale {
			nn, _ := n.opts.str("node-name")
			if n.deleted || g.referenced(nn, n) {
				continue
			}
			n.deleted, again = true, true
		}
	}
	return true, nil
}

// rewriteDrive puts a -drive (or short form) on img.
func (g *blockGraph) rewriteDrive(dr *drive, img image) {
	o := dr.opts
	old, _ := o.str("format")
	if old == "" {
		old, _ = o.str("driver")
	}
	if sub := o.child("file"); sub != nil {
		sub.setStr("filename", img.File)
	} else {
		o.setStr("file", img.File)
	}
	if old != img.Format {
		for _, k := range formatOnly {
			o.remove(k)
		}
	}
	o.remove("backing")
	if _, ok := o.str("driver"); ok {
		o.setStr("driver", img.Format)
	} else {
		o.setStr("format", img.Format)
	}
	dr.changed = true
}

// abs makes a path of the command line absolute.
func (g *blockGraph) abs(p string) string {
	if p == "" || filepath.IsAbs(p) {
		return filepath.Clean(p)
	}
	dir := g.dir
	if dir == "" {
		dir, _ = os.Getwd()
	}
	return filepath.Join(dir, p)
}

// absPath makes a backing file name absolute relative to its overlay.
func absPath(overlay, backing string) string {
	if backing == "" || filepath.IsAbs(backing) || strings.Contains(backing, ":") && !strings.HasPrefix(backing, ".") {
		return backing
	}
	return filepath.Join(filepath.Dir(overlay), backing)
}
