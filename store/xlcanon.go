package store

import (
	"bytes"
	"strconv"
	"time"
)

// Nearly every record file is in the canonical layout, the one Marshal
// writes: the header comment, then one `key = value` line per field that
// is set, in a fixed order (format_version and name always), strings in
// double quotes, numbers in decimal, the labels on one line sorted by key,
// the disks in index order with their fields in a fixed order, the config,
// and last the extra settings sorted by key. Unmarshal first reads a file
// with unmarshalCanonical, which expects that order instead of scanning and
// looking up every key, and hands anything else to the general parser.
//
// unmarshalCanonical never reports an error itself: on any doubt it gives
// up and the general parser reads the file from the start, so the errors
// are always the general parser's. It decodes escaped strings, times,
// numbers and extra values as the general parser does (mostly with its
// code) and checks what validate checks, so every file it accepts is one
// the general parser accepts with an equal record (FuzzCanonical checks
// this on arbitrary input, and FuzzRoundTrip that it accepts whatever
// Marshal writes).

// canonParser walks a record file in the canonical layout. ok turns false
// at the first thing that is not canonical, and every method then does
// nothing.
//
// The record does not keep the file: the text of its strings, decoded, is
// collected in text, and once the whole file is read it becomes one string
// that every string field, label and extra setting is a slice of (fixes,
// labels and extras say which part goes where).
type canonParser struct {
	p      xlParser
	ok     bool
	text   []byte
	fixes  []textFix
	labels []textPair
	extras []textPair
}

// textSpan is text[a:b].
type textSpan struct{ a, b int }

// textFix is a string field of the record and its text.
type textFix struct {
	dst  *string
	text textSpan
}

// textPair is a label's or an extra setting's key and value.
type textPair struct{ key, value textSpan }

// canonScratch is the working memory of unmarshalCanonical, kept by a
// List reader from one record to the next.
type canonScratch struct {
	items  []xlValue
	text   []byte
	fixes  []textFix
	labels []textPair
	extras []textPair
}

// newCanonScratch returns working memory, in one allocation, for a
// record with two disks and short strings; a larger record grows it.
func newCanonScratch() *canonScratch {
	m := new(struct {
		sc     canonScratch
		items  [4]xlValue
		text   [512]byte
		fixes  [24]textFix
		labels [4]textPair
		extras [2]textPair
	})
	m.sc = canonScratch{items: m.items[:0], text: m.text[:0], fixes: m.fixes[:0], labels: m.labels[:0], extras: m.extras[:0]}
	return &m.sc
}

// unmarshalCanonical parses data when it is a valid record in the
// canonical layout, taking the record's memory from blocks (which may be
// nil). It reports false for anything else, including every input the
// general parser refuses.
func unmarshalCanonical(data []byte, blocks *recordBlocks) (*Record, bool) {
	if len(data) < len(recordHeader) || string(data[:len(recordHeader)]) != recordHeader {
		return nil, false
	}
	sc := blocks.canonScratch()
	c := canonParser{
		p:  xlParser{data: data, line: 1, items: sc.items[:0], blocks: blocks},
		ok: true, text: sc.text[:0], fixes: sc.fixes[:0], labels: sc.labels[:0], extras: sc.extras[:0],
	}
	defer func() {
		clear(c.fixes) // they point into the record
		sc.items, sc.text, sc.fixes, sc.labels, sc.extras = c.p.items[:0], c.text[:0], c.fixes[:0], c.labels[:0], c.extras[:0]
	}()
	if !c.key(recordHeader) || !c.key("format_version = ") {
		return nil, false
	}
	r := blocks.record()
	r.FormatVersion = int(c.number(1 << 30))
	if r.FormatVersion == 0 || !c.key("name = ") {
		return nil, false
	}
	c.str(&r.Name)
	if c.key("description = ") {
		c.str(&r.Description)
	}
	if c.key("creation_time = ") {
		r.CreationTime = c.timestamp()
		if c.key("creation_time_epoch = ") {
			if epoch := c.number(1 << 62); r.CreationTime.Unix() != int64(epoch) {
				c.ok = false
			}
		}
	}
	if c.key("state = ") {
		c.str(&r.State)
	}
	if c.key("parent = ") {
		c.str(&r.Parent)
	}
	if c.key("status = ") {
		c.str((*string)(&r.Status))
	}
	if c.key("memory = ") {
		c.str(&r.Memory.Kind)
	}
	if c.key("memory_node = ") {
		c.str(&r.Memory.Node)
	}
	if c.key("memory_file = ") {
		c.str(&r.Memory.File)
	}
	if c.key("downtime_ns = ") {
		r.Downtime = time.Duration(c.number(1<<63 - 1))
	}
	if c.key("labels = [") {
		c.labelItems()
	}
	if c.key("disks = ") {
		if n := c.number(MaxDisks); n > 0 && c.ok {
			r.Disks = blocks.diskSlice(int(n))
			for i := range r.Disks {
				c.disk(i, &r.Disks[i])
			}
		}
	}
	if c.key("config = ") {
		a, b, esc := c.quoted()
		if c.ok && c.eol() {
			r.Config, _ = c.p.bytes(&xlValue{kind: 's', a: a, b: b, esc: esc})
		}
	}
	c.extraSettings()
	if !c.ok || c.p.pos != len(data) {
		return nil, false
	}
	text := blocks.text(c.text)
	for _, f := range c.fixes {
		*f.dst = text[f.text.a:f.text.b]
	}
	r.Labels = textMap(text, c.labels)
	r.Extra = textMap(text, c.extras)
	if !r.canonicalValid() {
		return nil, false
	}
	return r, true
}

// textMap returns the pairs as a map of slices of text, nil for none.
func textMap(text string, pairs []textPair) map[string]string {
	if len(pairs) == 0 {
		return nil
	}
	m := make(map[string]string, len(pairs))
	for _, kv := range pairs {
		m[text[kv.key.a:kv.key.b]] = text[kv.value.a:kv.value.b]
	}
	return m
}

// canonicalValid is validate(false) for a record that unmarshalCanonical
// built, leaving out what its reading already ensured: label keys without
// '=', extra keys that are identifiers this version does not use, a format
// version, counts and durations in range. Names and times remain: a
// parent that is the record itself, or a time with a zone offset that
// takes it out of years 0 to 9999, reads fine.
func (r *Record) canonicalValid() bool {
	if nameProblem(r.Name) != "" || r.Parent != "" && (r.Parent == r.Name || nameProblem(r.Parent) != "") ||
		!timeStorable(r.CreationTime) {
		return false
	}
	for i := range r.Disks {
		if !timeStorable(r.Disks[i].Date) {
			return false
		}
	}
	return true
}

// key moves past k (a key and " = ", or another literal) when the input
// continues with it.
func (c *canonParser) key(k string) bool {
	p := &c.p
	if !c.ok || len(p.data)-p.pos < len(k) || string(p.data[p.pos:p.pos+len(k)]) != k {
		return false
	}
	p.pos += len(k)
	return true
}

// eol moves past the newline that ends a value.
func (c *canonParser) eol() bool {
	p := &c.p
	if !c.ok || p.pos >= len(p.data) || p.data[p.pos] != '\n' {
		c.ok = false
		return false
	}
	p.pos++
	return true
}

// quoted scans a double-quoted string; the text between the quotes is
// data[a:b], and esc says whether it holds escapes.
func (c *canonParser) quoted() (a, b int, esc bool) {
	p := &c.p
	if !c.ok || p.pos >= len(p.data) || p.data[p.pos] != '"' {
		c.ok = false
		return 0, 0, false
	}
	// Most strings hold no escape: they end at the first '"', with no
	// backslash or newline before it. The general scanner checks the
	// others.
	a = p.pos + 1
	i := a
	for i < len(p.data) && !quoteStop[p.data[i]] {
		i++
	}
	if i < len(p.data) && p.data[i] == '"' {
		p.pos = i + 1
		return a, i, false
	}
	if i == len(p.data) {
		c.ok = false
		return 0, 0, false
	}
	a, b, esc, err := p.scanQuoted('"')
	if err != nil {
		c.ok = false
	}
	return a, b, esc
}

// quoteStop marks the bytes that end the plain part of a double-quoted
// string: the closing quote, an escape, a newline (an error).
var quoteStop = [256]bool{'"': true, '\\': true, '\n': true}

// decoded reads a double-quoted string and appends its decoded text to
// c.text.
func (c *canonParser) decoded() textSpan {
	a, b, esc := c.quoted()
	if !c.ok {
		return textSpan{}
	}
	start := len(c.text)
	if esc {
		c.text = c.p.appendUnescaped(c.text, a, b)
	} else {
		c.text = append(c.text, c.p.data[a:b]...)
	}
	return textSpan{start, len(c.text)}
}

// str reads a double-quoted string and the end of its line, for *dst.
func (c *canonParser) str(dst *string) {
	if t := c.decoded(); c.eol() {
		c.fixes = append(c.fixes, textFix{dst, t})
	}
}

// timestamp reads a quoted RFC 3339 time and the end of its line.
func (c *canonParser) timestamp() time.Time {
	a, b, esc := c.quoted()
	if !c.ok || esc || !c.eol() {
		c.ok = false
		return time.Time{}
	}
	if t, ok := parseUTCTime(c.p.data[a:b]); ok {
		return t
	}
	t, err := parseTime(string(c.p.data[a:b]))
	if err != nil {
		c.ok = false
	}
	return t
}

// number reads a decimal number up to max and the end of its line. It
// gives up on anything the general parser would read differently (hex,
// other letters) or refuse (too large), and on more than 19 digits (which
// it would have to check for overflow digit by digit).
func (c *canonParser) number(max uint64) uint64 {
	p := &c.p
	if !c.ok {
		return 0
	}
	i := p.pos
	end := min(len(p.data), i+19) // 19 digits never overflow a uint64
	var n uint64
	for ; i < end && '0' <= p.data[i] && p.data[i] <= '9'; i++ {
		n = n*10 + uint64(p.data[i]-'0')
	}
	if i == p.pos || n > max || i < len(p.data) && '0' <= p.data[i] && p.data[i] <= '9' {
		c.ok = false
		return 0
	}
	p.pos = i
	c.eol()
	return n
}

// labelItems reads the rest of a labels line, `[` already read: one or
// more double-quoted "key=value" items, each after a space, separated by
// ',' and sorted by key, then " ]".
func (c *canonParser) labelItems() {
	for c.key(" ") {
		t := c.decoded()
		if !c.ok {
			return
		}
		eq := bytes.IndexByte(c.text[t.a:t.b], '=')
		if eq <= 0 {
			break
		}
		kv := textPair{textSpan{t.a, t.a + eq}, textSpan{t.a + eq + 1, t.b}}
		if n := len(c.labels); n > 0 && string(c.text[kv.key.a:kv.key.b]) <= string(c.text[c.labels[n-1].key.a:c.labels[n-1].key.b]) {
			break
		}
		c.labels = append(c.labels, kv)
		if c.key(",") {
			continue
		}
		if c.key(" ]\n") {
			return
		}
		break
	}
	c.ok = false
}

// disk reads the lines of disk i that are there, in Marshal's order of
// the fields. It leaves a line with a field this version does not know
// for extra.
func (c *canonParser) disk(i int, d *Disk) {
	var buf [16]byte
	prefix := append(strconv.AppendInt(append(buf[:0], "disk_"...), int64(i), 10), '_')
	p := &c.p
	last := -1
	for c.ok && len(p.data)-p.pos > len(prefix) && string(p.data[p.pos:p.pos+len(prefix)]) == string(prefix) {
		rest := p.data[p.pos+len(prefix):]
		k := 0
		for k < len(rest) && isIdentByte(rest[k]) {
			k++
		}
		f := diskField(rest[:k])
		if f <= last {
			return
		}
		if len(rest) < k+3 || string(rest[k:k+3]) != " = " {
			c.ok = false
			return
		}
		p.pos += len(prefix) + k + 3
		last = f
		switch f {
		case 0:
			c.str(&d.Device)
		case 1:
			c.str(&d.Node)
		case 2:
			c.str(&d.File)
		case 3:
			c.str(&d.Kind)
		case 4:
			c.str(&d.ID)
		case 5:
			c.str(&d.Tag)
		case 6:
			c.str(&d.Overlay)
		case 7:
			d.VMStateSize = c.number(1<<64 - 1)
		case 8:
			d.Date = c.timestamp()
		case 9:
			d.VMClock = time.Duration(c.number(1<<63 - 1))
		case 10:
			d.Removed = c.number(1) == 1
		}
	}
}

// extraSettings reads the settings left, sorted by key, none of them a key
// this version knows; each value is one xl value, checked by the general
// parser and kept as it is written.
func (c *canonParser) extraSettings() {
	p := &c.p
	prev := textSpan{}
	for c.ok && p.pos < len(p.data) {
		start := p.pos
		if p.data[start] < 'a' || p.data[start] > 'z' {
			c.ok = false
			return
		}
		for p.pos < len(p.data) && isIdentByte(p.data[p.pos]) {
			p.pos++
		}
		key := p.data[start:p.pos]
		if len(c.extras) > 0 && string(key) <= string(p.data[prev.a:prev.b]) || topKey(key) >= 0 {
			c.ok = false
			return
		}
		if _, _, known := diskKey(key); known || !c.key(" = ") {
			c.ok = false
			return
		}
		var v xlValue
		if err := p.value(&v, 0); err != nil || !c.eol() {
			c.ok = false
			return
		}
		prev = textSpan{start, start + len(key)}
		k := len(c.text)
		c.text = append(append(c.text, key...), p.data[v.start:v.end]...)
		c.extras = append(c.extras, textPair{textSpan{k, k + len(key)}, textSpan{k + len(key), len(c.text)}})
	}
}
