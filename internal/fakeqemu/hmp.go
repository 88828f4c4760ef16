package fakeqemu

import (
	"encoding/binary"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// cmdHMP runs the HMP subset: savevm, loadvm, delvm, info snapshots, info
// status and xp. Like QEMU, HMP errors are successful QMP replies whose
// text starts with "Error: ".
func cmdHMP(s *Server, x *call) (any, *qerr) {
	var a struct {
		CommandLine string `json:"command-line"`
		CPUIndex    *int   `json:"cpu-index"`
	}
	if e := x.decode(&a, "command-line"); e != nil {
		return nil, e
	}
	s.hmpLog = append(s.hmpLog, a.CommandLine)
	f := strings.Fields(a.CommandLine)
	if len(f) == 0 {
		return "", nil
	}
	if e := s.matchFault(f[0], "", ""); e != nil {
		return "Error: " + e.desc + "\r\n", nil
	}
	errOut := func(msg string) (any, *qerr) {
		if msg == "" {
			return "", nil
		}
		return "Error: " + msg + "\r\n", nil
	}
	arg := func() string {
		if len(f) > 1 {
			return f[1]
		}
		return ""
	}
	switch f[0] {
	case "savevm":
		return errOut(s.saveSnapshot(arg(), "", nil, true))
	case "loadvm":
		if arg() == "" {
			return "Parameter 'name' is missing\r\n", nil
		}
		return errOut(s.loadSnapshot(arg(), "", nil))
	case "delvm":
		if arg() == "" {
			return "Parameter 'name' is missing\r\n", nil
		}
		return errOut(s.deleteSnapshot(arg(), nil))
	case "info":
		switch arg() {
		case "snapshots":
			return s.infoSnapshots(), nil
		case "status":
			if s.status == "running" {
				return "VM status: running\r\n", nil
			}
			if s.status == "paused" {
				return "VM status: paused\r\n", nil
			}
			return "VM status: paused (" + s.status + ")\r\n", nil
		}
	case "xp":
		return s.hmpXP(f[1:]), nil
	}
	return fmt.Sprintf("unknown command: '%s'\r\n", strings.Join(f, " ")), nil
}

// hmpXP shows guest memory: the counter at Options.CounterAddr, zeros
// elsewhere. Only "/1<size>x ADDR" is simulated.
func (s *Server) hmpXP(args []string) string {
	if len(args) != 2 || !strings.HasPrefix(args[0], "/") {
		return "fakeqemu: xp needs /FMT ADDR\r\n"
	}
	fmtS := strings.TrimPrefix(args[0], "/")
	count := 1
	i := 0
	for i < len(fmtS) && fmtS[i] >= '0' && fmtS[i] <= '9' {
		i++
	}
	if i > 0 {
		count, _ = strconv.Atoi(fmtS[:i])
	}
	size, format := 4, byte('x')
	for _, ch := range fmtS[i:] {
		switch ch {
		case 'b':
			size = 1
		case 'h':
			size = 2
		case 'w':
			size = 4
		case 'g':
			size = 8
		case 'x':
			format = 'x'
		default:
			return fmt.Sprintf("fakeqemu: xp format %q not simulated\r\n", ch)
		}
	}
	if count != 1 || format != 'x' {
		return "fakeqemu: xp simulates count 1 only\r\n"
	}
	addr, err := strconv.ParseUint(args[1], 0, 64)
	if err != nil {
		return fmt.Sprintf("invalid char '%s' in expression\r\n", args[1])
	}
	var mem [8]byte
	binary.LittleEndian.PutUint64(mem[:], s.counter)
	var v uint64
	for b := 0; b < size; b++ {
		a := addr + uint64(b)
		if a >= s.opts.CounterAddr && a < s.opts.CounterAddr+8 {
			v |= uint64(mem[a-s.opts.CounterAddr]) << (8 * b)
		}
	}
	return fmt.Sprintf("%016x: 0x%0*x\r\n", addr, size*2, v)
}

// infoSnapshots renders `info snapshots` as QEMU 7.2 does.
func (s *Server) infoSnapshots() string {
	if len(s.blk.disks) == 0 {
		return "No available block device supports snapshots\r\n"
	}
	vm := s.blk.disks[0].active()
	has := false
	for _, d := range s.blk.disks {
		has = has || len(d.active().snaps) > 0
	}
	if !has {
		return "There is no snapshot available.\r\n"
	}
	onAll := func(name string) bool {
		for _, d := range s.blk.disks {
			if _, sn := d.active().findSnap("", name); sn == nil {
				return false
			}
		}
		return true
	}
	var b strings.Builder
	b.WriteString("List of snapshots present on all disks:\r\n")
	global := map[string]bool{}
	var rows []string
	for _, sn := range vm.snaps {
		if onAll(sn.Name) {
			global[sn.Name] = true
			rows = append(rows, snapshotRow("--", sn))
		}
	}
	if len(rows) == 0 {
		b.WriteString("None\r\n")
	} else {
		b.WriteString(snapshotHeader())
		for _, r := range rows {
			b.WriteString(r)
		}
	}
	for _, d := range s.blk.disks {
		var partial []string
		for _, sn := range d.active().snaps {
			if !global[sn.Name] {
				partial = append(partial, snapshotRow(sn.ID, sn))
			}
		}
		if len(partial) == 0 {
			continue
		}
		// Disks attached with -blockdev have no BlockBackend name, so
		// QEMU prints an empty one.
		b.WriteString("\r\nList of partial (non-loadable) snapshots on '':\r\n")
		b.WriteString(snapshotHeader())
		for _, r := range partial {
			b.WriteString(r)
		}
	}
	return b.String()
}

const snapshotRowFormat = "%-9s %-16s %8s %19s %12s %10s\r\n"

func snapshotHeader() string {
	return fmt.Sprintf(snapshotRowFormat, "ID", "TAG", "VM SIZE", "DATE", "VM CLOCK", "ICOUNT")
}

func snapshotRow(id string, sn *snapshot) string {
	date := time.Unix(sn.DateSec, sn.DateNsec).Format("2006-01-02 15:04:05")
	ms := sn.VMClockNsec / 1e6
	clock := fmt.Sprintf("%02d:%02d:%02d.%03d", ms/3600000, ms/60000%60, ms/1000%60, ms%1000)
	icount := ""
	if sn.hasICount {
		icount = "0"
	}
	return fmt.Sprintf(snapshotRowFormat, id, sn.Name, sizeToStr(sn.VMStateSize), date, clock, icount)
}

// sizeToStr formats a byte count like QEMU's size_to_str: three
// significant digits and a binary suffix.
func sizeToStr(v uint64) string {
	suffixes := []string{"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
	_, exp := math.Frexp(float64(v) / (1000.0 / 1024.0))
	i := (exp - 1) / 10
	if i < 0 {
		i = 0
	}
	return fmt.Sprintf("%.3g %s", float64(v)/float64(uint64(1)<<(10*i)), suffixes[i])
}
