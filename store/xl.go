package store

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// topKeys are the record-level keys, in the order of their index.
var topKeys = [...]string{
	"format_version", "name", "description", "creation_time", "creation_time_epoch", "state", "parent",
	"status", "memory", "memory_node", "memory_file", "downtime_ns", "labels", "disks", "config",
}

// topKey returns the index of a record-level key in topKeys, or -1. (A
// switch compiles to a search without hashing or allocating.)
func topKey(key []byte) int {
	switch string(key) {
	case "format_version":
		return 0
	case "name":
		return 1
	case "description":
		return 2
	case "creation_time":
		return 3
	case "creation_time_epoch":
		return 4
	case "state":
		return 5
	case "parent":
		return 6
	case "status":
		return 7
	case "memory":
		return 8
	case "memory_node":
		return 9
	case "memory_file":
		return 10
	case "downtime_ns":
		return 11
	case "labels":
		return 12
	case "disks":
		return 13
	case "config":
		return 14
	}
	return -1
}

// diskField returns the index of a per-disk field name, or -1.
func diskField(name []byte) int {
	switch string(name) {
	case "device":
		return 0
	case "node":
		return 1
	case "file":
		return 2
	case "kind":
		return 3
	case "id":
		return 4
	case "tag":
		return 5
	case "overlay":
		return 6
	case "vm_state_size":
		return 7
	case "date":
		return 8
	case "vm_clock_ns":
		return 9
	case "removed":
		return 10
	}
	return -1
}

const maxListDepth = 16

// recordHeader is the comment line Marshal starts every record with.
const recordHeader = "# Snapshot metadata (xl config syntax). Edit with care: the store checks every value.\n"

// Marshal returns r in the record file format, after validating it.
//
// A record is an xl config file (the syntax of xl.cfg, parsed by libxlu):
// one `key = value` setting per line (or separated by ';'), '#' comments to
// the end of the line, values that are double- or single-quoted strings,
// numbers ([0-9][0-9a-fx]*) or lists in '[ ]' of values, separated by ','
// (a trailing ',' and newlines inside a list are allowed). Keys are
// [a-z][_0-9a-z]*. Keys written by this version:
//
//	format_version      number, >= 1
//	name                string
//	description         string
//	creation_time       string, RFC 3339 with nanoseconds, UTC
//	creation_time_epoch number, seconds (informational; must agree)
//	state, parent, status
//	memory, memory_node, memory_file
//	downtime_ns         number
//	labels              list of "key=value" strings
//	disks               number of disks
//	disk_<i>_device, disk_<i>_node, disk_<i>_file, disk_<i>_kind,
//	disk_<i>_id, disk_<i>_tag, disk_<i>_overlay, disk_<i>_date (strings)
//	disk_<i>_vm_state_size, disk_<i>_vm_clock_ns, disk_<i>_removed (numbers)
//	config              string: the domain config, byte for byte
//
// Empty strings and zero numbers are left out. Strings are written in
// double quotes; '"', backslash, newline, tab and carriage return are written as
// \" \\ \n \t \r, every other byte that is a control character, part of a
// non-printable character or not valid UTF-8 as \xHH, and printable UTF-8
// as is. The parser accepts the escapes of libxlu (\" \' \\ \a \b \f \n \r
// \t \v \xHH) and refuses others, including octal ones, which libxlu reads
// inconsistently. libxlu keeps strings as C strings, so a config holding a
// NUL byte reads back whole here but truncated in xl tools.
//
// Settings this version does not know are kept in Record.Extra and written
// last, sorted by key, exactly as read. A key set twice is an error. A zero
// FormatVersion is written as CurrentFormatVersion, and a file without
// format_version reads as CurrentFormatVersion.
func Marshal(r *Record) ([]byte, error) {
	if err := r.Validate(); err != nil {
		return nil, err
	}
	n := 256 + len(r.Config) + len(r.Description) + 200*len(r.Disks)
	for k, v := range r.Extra {
		n += len(k) + len(v) + 4
	}
	return appendRecord(make([]byte, 0, n), r), nil
}

func appendRecord(b []byte, r *Record) []byte {
	b = append(b, recordHeader...)
	v := r.FormatVersion
	if v == 0 {
		v = CurrentFormatVersion
	}
	b = appendNumber(b, "format_version", uint64(v))
	b = appendString(b, "name", r.Name)
	b = appendString(b, "description", r.Description)
	if !r.CreationTime.IsZero() {
		t := r.CreationTime.UTC()
		b = appendString(b, "creation_time", t.Format(time.RFC3339Nano))
		if t.Unix() >= 0 {
			b = appendNumber(b, "creation_time_epoch", uint64(t.Unix()))
		}
	}
	b = appendString(b, "state", r.State)
	b = appendString(b, "parent", r.Parent)
	b = appendString(b, "status", string(r.Status))
	b = appendString(b, "memory", r.Memory.Kind)
	b = appendString(b, "memory_node", r.Memory.Node)
	b = appendString(b, "memory_file", r.Memory.File)
	b = appendNumber(b, "downtime_ns", uint64(r.Downtime))
	if len(r.Labels) > 0 {
		keys := make([]string, 0, len(r.Labels))
		for k := range r.Labels {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		b = append(b, "labels = ["...)
		for i, k := range keys {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, ' ')
			b = appendQuoted(b, k+"="+r.Labels[k])
		}
		b = append(b, " ]\n"...)
	}
	b = appendNumber(b, "disks", uint64(len(r.Disks)))
	var key []byte
	for i, d := range r.Disks {
		key = strconv.AppendInt(append(key[:0], "disk_"...), int64(i), 10)
		key = append(key, '_')
		k := len(key)
		field := func(name string) string { return string(append(key[:k], name...)) }
		b = appendString(b, field("device"), d.Device)
		b = appendString(b, field("node"), d.Node)
		b = appendString(b, field("file"), d.File)
		b = appendString(b, field("kind"), d.Kind)
		b = appendString(b, field("id"), d.ID)
		b = appendString(b, field("tag"), d.Tag)
		b = appendString(b, field("overlay"), d.Overlay)
		b = appendNumber(b, field("vm_state_size"), d.VMStateSize)
		if !d.Date.IsZero() {
			b = appendString(b, field("date"), d.Date.UTC().Format(time.RFC3339Nano))
		}
		b = appendNumber(b, field("vm_clock_ns"), uint64(d.VMClock))
		if d.Removed {
			b = appendNumber(b, field("removed"), 1)
		}
	}
	if len(r.Config) > 0 {
		b = append(b, "config = "...)
		b = appendQuoted(b, string(r.Config))
		b = append(b, '\n')
	}
	if len(r.Extra) > 0 {
		keys := make([]string, 0, len(r.Extra))
		for k := range r.Extra {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			b = append(b, k...)
			b = append(b, " = "...)
			b = append(b, r.Extra[k]...)
			b = append(b, '\n')
		}
	}
	return b
}

func appendString(b []byte, key, s string) []byte {
	if s == "" {
		return b
	}
	b = append(b, key...)
	b = append(b, " = "...)
	b = appendQuoted(b, s)
	return append(b, '\n')
}

func appendNumber(b []byte, key string, n uint64) []byte {
	if n == 0 {
		return b
	}
	b = append(b, key...)
	b = append(b, " = "...)
	b = strconv.AppendUint(b, n, 10)
	return append(b, '\n')
}

// appendQuoted appends s as a double-quoted xl string that reads back as
// exactly the bytes of s.
func appendQuoted(b []byte, s string) []byte {
	b = append(b, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				b = append(b, '\\', c)
			case c == '\n':
				b = append(b, '\\', 'n')
			case c == '\t':
				b = append(b, '\\', 't')
			case c == '\r':
				b = append(b, '\\', 'r')
			case c < 0x20 || c == 0x7f:
				b = append(b, '\\', 'x', hexDigits[c>>4], hexDigits[c&15])
			default:
				b = append(b, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 || !unicode.IsPrint(r) {
			for j := i; j < i+size; j++ {
				b = append(b, '\\', 'x', hexDigits[s[j]>>4], hexDigits[s[j]&15])
			}
		} else {
			b = append(b, s[i:i+size]...)
		}
		i += size
	}
	return append(b, '"')
}

// Unmarshal parses a record file. Errors are *CorruptError (with an empty
// Path) giving the line. A record that Unmarshal accepts passes Validate,
// and Marshal then Unmarshal gives an equal record.
func Unmarshal(data []byte) (*Record, error) { return unmarshal(data, nil) }

// unmarshal is Unmarshal taking the record's memory from blocks (which may
// be nil).
func unmarshal(data []byte, blocks *recordBlocks) (*Record, error) {
	if r, ok := unmarshalCanonical(data, blocks); ok {
		return r, nil
	}
	return unmarshalGeneral(data, string(data))
}

// unmarshalGeneral parses any record file, in any layout the xl syntax
// allows, with src holding the same bytes as data: the strings without
// escapes are slices of src, one allocation for all of them.
func unmarshalGeneral(data []byte, src string) (*Record, error) {
	r := &Record{}
	var (
		seen       uint32
		seenBuf    [8]uint16
		diskSeen         = seenBuf[:0]
		diskCount        = -1
		epoch      int64 = -1
		epochLine  int
		creationOK bool
		v          xlValue
		itemBuf    [4]xlValue
	)
	p := xlParser{data: data, src: src, line: 1, items: itemBuf[:0]}
	for {
		key, keyPos, line, err := p.next(&v)
		if err != nil {
			return nil, err
		}
		if key == nil {
			break
		}
		if idx := topKey(key); idx >= 0 {
			if seen&(1<<idx) != 0 {
				return nil, &CorruptError{Line: line, Err: fmt.Errorf("%q is set twice", key)}
			}
			seen |= 1 << idx
			if err := r.setTop(&p, idx, &v, &diskCount, &epoch, &epochLine, line, &creationOK); err != nil {
				return nil, &CorruptError{Line: line, Err: err}
			}
			continue
		}
		if d, f, ok := diskKey(key); ok {
			if len(r.Disks) <= d {
				n := max(d+1, diskCount)
				r.Disks = append(r.Disks, make([]Disk, n-len(r.Disks))...)
				diskSeen = append(diskSeen, make([]uint16, n-len(diskSeen))...)
			}
			if diskSeen[d]&(1<<f) != 0 {
				return nil, &CorruptError{Line: line, Err: fmt.Errorf("%q is set twice", key)}
			}
			diskSeen[d] |= 1 << f
			if err := setDiskField(&p, &r.Disks[d], f, &v); err != nil {
				return nil, &CorruptError{Line: line, Err: err}
			}
			continue
		}
		k := p.text(keyPos, keyPos+len(key))
		if _, dup := r.Extra[k]; dup {
			return nil, &CorruptError{Line: line, Err: fmt.Errorf("%q is set twice", key)}
		}
		if r.Extra == nil {
			r.Extra = make(map[string]string)
		}
		r.Extra[k] = p.text(v.start, v.end)
	}
	if diskCount < 0 {
		diskCount = 0
	}
	if len(r.Disks) > diskCount {
		return nil, &CorruptError{Err: fmt.Errorf("disk_%d_* is set but disks = %d", len(r.Disks)-1, diskCount)}
	}
	for len(r.Disks) < diskCount {
		r.Disks = append(r.Disks, Disk{})
	}
	if seen&1 == 0 {
		r.FormatVersion = CurrentFormatVersion
	}
	if epoch >= 0 {
		if !creationOK {
			r.CreationTime = time.Unix(epoch, 0).UTC()
		} else if r.CreationTime.Unix() != epoch {
			return nil, &CorruptError{Line: epochLine, Err: fmt.Errorf("creation_time_epoch %d disagrees with creation_time %s", epoch, r.CreationTime.Format(time.RFC3339Nano))}
		}
	}
	if err := r.validate(false); err != nil {
		return nil, &CorruptError{Err: err}
	}
	return r, nil
}

func (r *Record) setTop(p *xlParser, idx int, v *xlValue, diskCount *int, epoch *int64, epochLine *int, line int, creationOK *bool) error {
	var err error
	switch idx {
	case 0:
		var n uint64
		n, err = p.number(v, 1<<30)
		if err == nil && n == 0 {
			err = errors.New("format_version must be at least 1")
		}
		r.FormatVersion = int(n)
	case 1:
		r.Name, err = p.string(v)
	case 2:
		r.Description, err = p.string(v)
	case 3:
		var s string
		if s, err = p.string(v); err == nil {
			r.CreationTime, err = parseTime(s)
			*creationOK = err == nil
		}
	case 4:
		var n uint64
		n, err = p.number(v, 1<<62)
		*epoch, *epochLine = int64(n), line
	case 5:
		r.State, err = p.string(v)
	case 6:
		r.Parent, err = p.string(v)
	case 7:
		var s string
		s, err = p.string(v)
		r.Status = Status(s)
	case 8:
		r.Memory.Kind, err = p.string(v)
	case 9:
		r.Memory.Node, err = p.string(v)
	case 10:
		r.Memory.File, err = p.string(v)
	case 11:
		var n uint64
		n, err = p.number(v, 1<<63-1)
		r.Downtime = time.Duration(n)
	case 12:
		err = r.setLabels(p, v)
	case 13:
		var n uint64
		n, err = p.number(v, MaxDisks)
		*diskCount = int(n)
	case 14:
		// Decoded straight into the record's own bytes.
		r.Config, err = p.bytes(v)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", topKeys[idx], err)
	}
	return nil
}

func (r *Record) setLabels(p *xlParser, v *xlValue) error {
	if v.kind != 'l' {
		return errors.New("want a list of \"key=value\" strings")
	}
	for i := range v.items {
		s, err := p.string(&v.items[i])
		if err != nil {
			return fmt.Errorf("item %d: %w", i, err)
		}
		k, val, ok := strings.Cut(s, "=")
		if !ok || k == "" {
			return fmt.Errorf("item %q is not key=value", s)
		}
		if _, dup := r.Labels[k]; dup {
			return fmt.Errorf("label %q is set twice", k)
		}
		if r.Labels == nil {
			r.Labels = make(map[string]string, len(v.items))
		}
		r.Labels[k] = val
	}
	return nil
}

func setDiskField(p *xlParser, d *Disk, f int, v *xlValue) error {
	var err error
	var n uint64
	switch f {
	case 0:
		d.Device, err = p.string(v)
	case 1:
		d.Node, err = p.string(v)
	case 2:
		d.File, err = p.string(v)
	case 3:
		d.Kind, err = p.string(v)
	case 4:
		d.ID, err = p.string(v)
	case 5:
		d.Tag, err = p.string(v)
	case 6:
		d.Overlay, err = p.string(v)
	case 7:
		d.VMStateSize, err = p.number(v, 1<<64-1)
	case 8:
		var s string
		if s, err = p.string(v); err == nil {
			d.Date, err = parseTime(s)
		}
	case 9:
		n, err = p.number(v, 1<<63-1)
		d.VMClock = time.Duration(n)
	case 10:
		n, err = p.number(v, 1)
		d.Removed = n == 1
	}
	return err
}

func parseTime(s string) (time.Time, error) {
	if t, ok := parseUTCTime(s); ok {
		return t, nil
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("want an RFC 3339 time: %w", err)
	}
	return t.UTC(), nil
}

// diskKey splits "disk_<i>_<field>" for a known field and a canonical
// index below MaxDisks.
func diskKey(key []byte) (idx, field int, ok bool) {
	const prefix = "disk_"
	if len(key) < len(prefix)+3 || string(key[:len(prefix)]) != prefix {
		return 0, 0, false
	}
	rest := key[len(prefix):]
	j := 0
	for j < len(rest) && '0' <= rest[j] && rest[j] <= '9' {
		idx = idx*10 + int(rest[j]-'0')
		j++
		if j > 4 {
			return 0, 0, false
		}
	}
	if j == 0 || j > 1 && rest[0] == '0' || idx >= MaxDisks || j >= len(rest) || rest[j] != '_' {
		return 0, 0, false
	}
	field = diskField(rest[j+1:])
	return idx, field, field >= 0
}

// isKnownKey reports whether the parser gives key a meaning of its own
// (so it can never be an Extra key).
func isKnownKey(key string) bool {
	if topKey([]byte(key)) >= 0 {
		return true
	}
	_, _, ok := diskKey([]byte(key))
	return ok
}

func isIdent(s string) bool {
	if s == "" || s[0] < 'a' || s[0] > 'z' {
		return false
	}
	for i := 1; i < len(s); i++ {
		if !isIdentByte(s[i]) {
			return false
		}
	}
	return true
}

func isIdentByte(c byte) bool {
	return 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '_'
}

// checkRawValue reports whether raw is exactly one xl value, as the parser
// would capture it for Record.Extra.
func checkRawValue(raw string) error {
	p := xlParser{data: []byte(raw), line: 1}
	var v xlValue
	if err := p.value(&v, 0); err != nil {
		return err
	}
	if p.pos != len(raw) {
		return fmt.Errorf("unexpected text after the value at offset %d", p.pos)
	}
	return nil
}

// parseCurrent reads the domain's current-snapshot file.
func parseCurrent(data []byte) (string, error) {
	var (
		name string
		seen bool
		v    xlValue
	)
	p := xlParser{data: data, line: 1}
	for {
		key, _, line, err := p.next(&v)
		if err != nil {
			return "", err
		}
		if key == nil {
			return name, nil
		}
		if string(key) != "current" {
			continue
		}
		if seen {
			return "", &CorruptError{Line: line, Err: errors.New(`"current" is set twice`)}
		}
		seen = true
		if name, err = p.string(&v); err != nil {
			return "", &CorruptError{Line: line, Err: fmt.Errorf("current: %w", err)}
		}
		if name != "" {
			if err := ValidateName(name); err != nil {
				return "", &CorruptError{Line: line, Err: err}
			}
		}
	}
}

func marshalCurrent(name string) []byte {
	b := []byte("# Current snapshot of this domain (xl config syntax).\n")
	return append(appendString(b, "current", name), '\n')
}

// xlValue is one parsed value; start and end delimit its source text.
// Strings and numbers are not converted until a caller asks (xlParser's
// string, bytes and number), so a value kept only as raw text (an Extra
// setting) costs nothing.
type xlValue struct {
	kind byte // 's' string, 'n' number, 'l' list
	// esc is set when the string holds escapes (already checked by the
	// parser, so decoding them cannot fail).
	esc bool
	// a and b delimit a number, or a string's text between its quotes.
	a, b int
	// items are a list's items, for a list that is a setting's value (the
	// items of nested lists are checked, not kept). They share the
	// parser's buffer and are valid until the next setting is parsed.
	items      []xlValue
	start, end int
}

// string returns v as a string: a string's decoded text or a number's
// digits.
func (p *xlParser) string(v *xlValue) (string, error) {
	switch {
	case v.kind == 's' && v.esc:
		var buf [128]byte
		return string(p.appendUnescaped(buf[:0], v.a, v.b)), nil
	case v.kind == 's' || v.kind == 'n':
		return p.text(v.a, v.b), nil
	}
	return "", errors.New("want a string, got a list")
}

// bytes returns v's text as a new slice (from p.blocks when set), nil
// when it is empty.
func (p *xlParser) bytes(v *xlValue) ([]byte, error) {
	switch {
	case v.kind == 'l':
		return nil, errors.New("want a string, got a list")
	case v.a == v.b:
		return nil, nil
	case v.kind == 's' && v.esc:
		return p.appendUnescaped(p.blocks.byteSlice(v.b-v.a), v.a, v.b), nil
	}
	return append(p.blocks.byteSlice(v.b-v.a), p.data[v.a:v.b]...), nil
}

// appendUnescaped appends the decoded text of the checked string text
// data[i:j] to b.
func (p *xlParser) appendUnescaped(b []byte, i, j int) []byte {
	for i < j {
		k := bytes.IndexByte(p.data[i:j], '\\')
		if k < 0 {
			return append(b, p.data[i:j]...)
		}
		b = append(b, p.data[i:i+k]...)
		i += k
		e := p.data[i+1]
		i += 2
		switch e {
		case 'a':
			e = 7
		case 'b':
			e = 8
		case 'f':
			e = 12
		case 'n':
			e = '\n'
		case 'r':
			e = '\r'
		case 't':
			e = '\t'
		case 'v':
			e = 11
		case 'x':
			e = byte(unhex(p.data[i])<<4 | unhex(p.data[i+1]))
			i += 2
		}
		b = append(b, e)
	}
	return b
}

// number reads a decimal (or 0x hex) number, from a number or a string,
// up to max.
func (p *xlParser) number(v *xlValue, max uint64) (uint64, error) {
	var text []byte
	switch v.kind {
	case 'n':
		text = p.data[v.a:v.b]
	case 's':
		if v.esc {
			s, _ := p.string(v)
			text = []byte(s)
		} else {
			text = p.data[v.a:v.b]
		}
	default:
		return 0, errors.New("want a number, got a list")
	}
	base := uint64(10)
	digits := text
	if len(text) > 2 && text[0] == '0' && text[1] == 'x' {
		base, digits = 16, text[2:]
	}
	if len(digits) == 0 {
		return 0, fmt.Errorf("want a number, got %q", text)
	}
	var n uint64
	for _, c := range digits {
		var d uint64
		switch {
		case '0' <= c && c <= '9':
			d = uint64(c - '0')
		case base == 16 && 'a' <= c && c <= 'f':
			d = uint64(c-'a') + 10
		case base == 16 && 'A' <= c && c <= 'F':
			d = uint64(c-'A') + 10
		default:
			return 0, fmt.Errorf("want a number, got %q", text)
		}
		if d > max || n > (max-d)/base {
			return 0, fmt.Errorf("number %s is larger than %d", text, max)
		}
		n = n*base + d
	}
	return n, nil
}

// xlParser is a hand-written scanner for the xl config syntax.
type xlParser struct {
	data []byte
	// src is data as one string: strings without escapes are slices of it,
	// so a record costs one allocation for all of them. Empty when the
	// caller does not keep results.
	src  string
	pos  int
	line int
	// items holds the items of the current setting's list, reused from
	// one setting to the next.
	items []xlValue
	// blocks, when set, provides the memory of the parsed record.
	blocks *recordBlocks
}

// text returns data[i:j] as a string, sharing src when it is set.
func (p *xlParser) text(i, j int) string {
	if p.src != "" {
		return p.src[i:j]
	}
	return string(p.data[i:j])
}

func (p *xlParser) errf(format string, args ...any) error {
	return &CorruptError{Line: p.line, Err: fmt.Errorf(format, args...)}
}

func (p *xlParser) skipBlanks() {
	for p.pos < len(p.data) && (p.data[p.pos] == ' ' || p.data[p.pos] == '\t') {
		p.pos++
	}
}

func (p *xlParser) skipComment() {
	if i := bytes.IndexByte(p.data[p.pos:], '\n'); i >= 0 {
		p.pos += i
	} else {
		p.pos = len(p.data)
	}
}

// skipSpace skips blanks, newlines and comments (inside a list).
func (p *xlParser) skipSpace() {
	for {
		p.skipBlanks()
		if p.pos >= len(p.data) {
			return
		}
		switch p.data[p.pos] {
		case '\n':
			p.pos++
			p.line++
		case '#':
			p.skipComment()
		default:
			return
		}
	}
}

// next parses the next setting into v and returns its key (a slice of the
// input; nil at the end of the input), the key's offset and its line.
func (p *xlParser) next(v *xlValue) (key []byte, keyPos, line int, err error) {
	for {
		p.skipBlanks()
		if p.pos >= len(p.data) {
			return nil, 0, 0, nil
		}
		c := p.data[p.pos]
		switch {
		case c == '\n':
			p.pos++
			p.line++
			continue
		case c == '#':
			p.skipComment()
			continue
		case c == ';':
			p.pos++
			continue
		case 'a' <= c && c <= 'z':
		default:
			return nil, 0, 0, p.errf("unexpected %s where a setting should start", describeByte(c))
		}
		line = p.line
		start := p.pos
		for p.pos < len(p.data) && isIdentByte(p.data[p.pos]) {
			p.pos++
		}
		key = p.data[start:p.pos]
		p.skipBlanks()
		if p.pos >= len(p.data) || p.data[p.pos] != '=' {
			what := "end of file"
			if p.pos < len(p.data) {
				what = describeByte(p.data[p.pos])
			}
			return nil, 0, 0, p.errf("want '=' after %q, got %s", key, what)
		}
		p.pos++
		p.skipBlanks()
		*v = xlValue{}
		if err := p.value(v, 0); err != nil {
			return nil, 0, 0, err
		}
		p.skipBlanks()
		if p.pos < len(p.data) {
			if c := p.data[p.pos]; c != '\n' && c != ';' && c != '#' {
				return nil, 0, 0, p.errf("unexpected %s after the value of %q", describeByte(c), key)
			}
		}
		return key, start, line, nil
	}
}

func (p *xlParser) value(v *xlValue, depth int) error {
	if p.pos >= len(p.data) {
		return p.errf("missing value at end of file")
	}
	v.start = p.pos
	switch c := p.data[p.pos]; {
	case c == '"' || c == '\'':
		a, b, esc, err := p.scanQuoted(c)
		if err != nil {
			return err
		}
		v.kind, v.a, v.b, v.esc = 's', a, b, esc
	case '0' <= c && c <= '9':
		for p.pos < len(p.data) {
			c := p.data[p.pos]
			if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || c == 'x') {
				break
			}
			p.pos++
		}
		v.kind, v.a, v.b = 'n', v.start, p.pos
	case c == '[':
		if depth >= maxListDepth {
			return p.errf("lists nested deeper than %d", maxListDepth)
		}
		p.pos++
		v.kind = 'l'
		if depth == 0 {
			p.items = p.items[:0]
		}
		var item xlValue
		for {
			p.skipSpace()
			if p.pos >= len(p.data) {
				return p.errf("unterminated list")
			}
			if p.data[p.pos] == ']' {
				p.pos++
				break
			}
			item = xlValue{}
			if err := p.value(&item, depth+1); err != nil {
				return err
			}
			if depth == 0 {
				p.items = append(p.items, item)
			}
			p.skipSpace()
			if p.pos >= len(p.data) {
				return p.errf("unterminated list")
			}
			if c := p.data[p.pos]; c == ',' {
				p.pos++
			} else if c != ']' {
				return p.errf("unexpected %s in a list", describeByte(c))
			}
		}
		if depth == 0 {
			v.items = p.items
		}
	default:
		return p.errf("unexpected %s where a value should start", describeByte(c))
	}
	v.end = p.pos
	return nil
}

// scanQuoted checks the quoted string starting at p.pos and moves past
// it. The text between the quotes is data[a:b]; esc says whether it holds
// escapes, which are all valid.
func (p *xlParser) scanQuoted(q byte) (a, b int, esc bool, err error) {
	a = p.pos + 1
	// Fast path: no escape before the closing quote.
	if j := bytes.IndexByte(p.data[a:], q); j >= 0 {
		seg := p.data[a : a+j]
		if bytes.IndexByte(seg, '\\') < 0 {
			if bytes.IndexByte(seg, '\n') >= 0 {
				return 0, 0, false, p.errf("newline inside a string")
			}
			p.pos = a + j + 1
			return a, a + j, false, nil
		}
	}
	for i := a; i < len(p.data); {
		switch p.data[i] {
		case q:
			p.pos = i + 1
			return a, i, esc, nil
		case '\n':
			return 0, 0, false, p.errf("newline inside a string")
		case '\\':
			if i+1 >= len(p.data) {
				return 0, 0, false, p.errf("unterminated string")
			}
			esc = true
			switch e := p.data[i+1]; e {
			case '"', '\'', '\\', 'a', 'b', 'f', 'n', 'r', 't', 'v':
				i += 2
			case 'x':
				if i+4 > len(p.data) || unhex(p.data[i+2]) < 0 || unhex(p.data[i+3]) < 0 {
					return 0, 0, false, p.errf(`\x must be followed by two hex digits`)
				}
				i += 4
			case '\n':
				return 0, 0, false, p.errf("newline inside a string")
			default:
				return 0, 0, false, p.errf(`unknown escape \%s in a string`, describeByte(e))
			}
		default:
			i++
		}
	}
	return 0, 0, false, p.errf("unterminated string")
}

// quoted parses the quoted string starting at p.pos and returns its
// decoded text.
func (p *xlParser) quoted(q byte) (string, error) {
	a, b, esc, err := p.scanQuoted(q)
	if err != nil {
		return "", err
	}
	return p.string(&xlValue{kind: 's', a: a, b: b, esc: esc})
}

func unhex(c byte) int {
	switch {
	case '0' <= c && c <= '9':
		return int(c - '0')
	case 'a' <= c && c <= 'f':
		return int(c-'a') + 10
	case 'A' <= c && c <= 'F':
		return int(c-'A') + 10
	}
	return -1
}

func describeByte(c byte) string {
	if c >= 0x20 && c < 0x7f {
		return strconv.QuoteRune(rune(c))
	}
	return fmt.Sprintf("byte 0x%02x", c)
}

// parseUTCTime is a fast path for the form this package writes,
// "2006-01-02T15:04:05.999999999Z". It reports false for anything else,
// which time.Parse then handles (and validates).
func parseUTCTime[T string | []byte](s T) (time.Time, bool) {
	if len(s) < 20 || s[len(s)-1] != 'Z' || s[4] != '-' || s[7] != '-' || s[10] != 'T' || s[13] != ':' || s[16] != ':' {
		return time.Time{}, false
	}
	num := func(i, n int) int {
		v := 0
		for j := i; j < i+n; j++ {
			c := s[j]
			if c < '0' || c > '9' {
				return -1
			}
			v = v*10 + int(c-'0')
		}
		return v
	}
	year, month, day := num(0, 4), num(5, 2), num(8, 2)
	hour, minute, sec := num(11, 2), num(14, 2), num(17, 2)
	nsec := 0
	switch frac := s[19 : len(s)-1]; {
	case len(frac) == 0:
	case len(frac) >= 2 && len(frac) <= 10 && frac[0] == '.':
		nsec = num(20, len(frac)-1)
		for i := len(frac) - 1; i < 9; i++ {
			nsec *= 10
		}
	default:
		return time.Time{}, false
	}
	if year < 0 || month < 1 || month > 12 || day < 1 || hour < 0 || hour > 23 || minute < 0 || minute > 59 ||
		sec < 0 || sec > 59 || nsec < 0 {
		return time.Time{}, false
	}
	if day > daysIn(month, year) { // e.g. February 30th: let time.Parse report it
		return time.Time{}, false
	}
	// time.Date would do, but this sits on List's path: days since
	// 1970-01-01 from the civil date (the month counted from March, so
	// that the leap day ends the year).
	y, m := year, month
	if m <= 2 {
		y--
		m += 12
	}
	era := y / 400 // year >= 0, so y >= -1: floor division below
	if y < 0 {
		era = -1
	}
	yoe := y - era*400
	doy := (153*(m-3)+2)/5 + day - 1
	days := era*146097 + yoe*365 + yoe/4 - yoe/100 + doy - 719468
	return time.Unix(int64(days)*86400+int64(hour*3600+minute*60+sec), int64(nsec)).UTC(), true
}

// daysIn returns the number of days of a month (1 to 12) of the
// proleptic Gregorian calendar.
func daysIn(month, year int) int {
	switch month {
	case 2:
		if year%4 == 0 && (year%100 != 0 || year%400 == 0) {
			return 29
		}
		return 28
	case 4, 6, 9, 11:
		return 30
	}
	return 31
}
