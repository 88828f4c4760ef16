package launch

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
)

// optTree is the value of a -drive, -blockdev or -device option, in
// either of QEMU's syntaxes: key=value pairs separated by commas (dotted
// keys for nested options, ",," for a comma in a value) or a JSON object.
// Members keep their order, so an option that is not changed can be
// written back as it was.
type optTree struct {
	json    bool
	members []*optMember
}

// optMember is one key of an optTree: a nested object (sub) or a leaf.
type optMember struct {
	key string
	sub *optTree
	// raw is a JSON leaf (string, number, bool, null or array).
	raw json.RawMessage
	// s is a key=value leaf; bare marks a key written without "=" (a
	// QemuOpts flag such as "readonly").
	s    string
	bare bool
}

// parseOptions parses an option value; JSON syntax when it starts with '{'.
func parseOptions(s string) (*optTree, error) {
	if strings.HasPrefix(s, "{") {
		return parseJSONObject([]byte(s))
	}
	t := &optTree{}
	for _, p := range optionPieces(s) {
		k, v, ok := strings.Cut(p, "=")
		k = unescapeOptionValue(k)
		if !ok {
			t.set(strings.Split(k, "."), &optMember{bare: true})
			continue
		}
		t.set(strings.Split(k, "."), &optMember{s: unescapeOptionValue(v)})
	}
	return t, nil
}

func parseJSONObject(b []byte) (*optTree, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, fmt.Errorf("%w: not a JSON object: %.60s", ErrSyntax, b)
	}
	t := &optTree{json: true}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, fmt.Errorf("%w: JSON option: %w", ErrSyntax, err)
		}
		key, _ := tok.(string)
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, fmt.Errorf("%w: JSON option %q: %w", ErrSyntax, key, err)
		}
		m := &optMember{key: key, raw: raw}
		if len(raw) > 0 && raw[0] == '{' {
			sub, err := parseJSONObject(raw)
			if err != nil {
				return nil, err
			}
			m.sub, m.raw = sub, nil
		}
		t.members = append(t.members, m)
	}
	if _, err := dec.Token(); err != nil {
		return nil, fmt.Errorf("%w: JSON option: %w", ErrSyntax, err)
	}
	return t, nil
}

// set stores m at the dotted path, creating nested objects.
func (t *optTree) set(path []string, m *optMember) {
	for i, k := range path {
		last := i == len(path)-1
		found := t.member(k)
		if last {
			m.key = k
			if found != nil {
				*found = *m
			} else {
				t.members = append(t.members, m)
			}
			return
		}
		if found == nil || found.sub == nil {
			sub := &optTree{json: t.json}
			if found == nil {
				t.members = append(t.members, &optMember{key: k, sub: sub})
			} else {
				*found = optMember{key: k, sub: sub}
			}
			t = sub
			continue
		}
		t = found.sub
	}
}

func (t *optTree) member(key string) *optMember {
	for _, m := range t.members {
		if m.key == key {
			return m
		}
	}
	return nil
}

// str returns the leaf at key as a string: a JSON string unquoted, any
// other JSON leaf as written.
func (t *optTree) str(key string) (string, bool) {
	m := t.member(key)
	if m == nil || m.sub != nil {
		return "", false
	}
	if !t.json {
		if m.bare {
			return "on", true
		}
		return m.s, true
	}
	var s string
	if json.Unmarshal(m.raw, &s) == nil {
		return s, true
	}
	return string(m.raw), true
}

// isNull reports whether key holds null (JSON null, or an empty value in
// key=value syntax, which is how QEMU's keyval spells null).
func (t *optTree) isNull(key string) bool {
	m := t.member(key)
	if m == nil || m.sub != nil {
		return false
	}
	if t.json {
		return string(m.raw) == "null"
	}
	return m.s == "" && !m.bare
}

// sub returns the nested object at key, nil when key is absent or a leaf.
func (t *optTree) child(key string) *optTree {
	if m := t.member(key); m != nil {
		return m.sub
	}
	return nil
}

// setStr sets key to the string v.
func (t *optTree) setStr(key, v string) {
	m := &optMember{s: v}
	if t.json {
		m.raw, _ = json.Marshal(v)
	}
	t.set([]string{key}, m)
}

// setBool sets key to a boolean.
func (t *optTree) setBool(key string, v bool) {
	m := &optMember{s: "off", raw: json.RawMessage("false")}
	if v {
		m.s, m.raw = "on", json.RawMessage("true")
	}
	t.set([]string{key}, m)
}

// setSub sets key to the nested object sub (which takes t's syntax).
func (t *optTree) setSub(key string, sub *optTree) {
	sub.setSyntax(t.json)
	t.set([]string{key}, &optMember{sub: sub})
}

func (t *optTree) setSyntax(json bool) {
	t.json = json
	for _, m := range t.members {
		if m.sub != nil {
			m.sub.setSyntax(json)
		}
	}
}

// remove deletes key.
func (t *optTree) remove(key string) {
	for i, m := range t.members {
		if m.key == key {
			t.members = append(t.members[:i], t.members[i+1:]...)
			return
		}
	}
}

// clone returns a deep copy of t.
func (t *optTree) clone() *optTree {
	c := &optTree{json: t.json}
	for _, m := range t.members {
		cm := *m
		if m.sub != nil {
			cm.sub = m.sub.clone()
		}
		c.members = append(c.members, &cm)
	}
	return c
}

// String writes t back in its syntax.
func (t *optTree) String() string {
	if t.json {
		var b strings.Builder
		t.writeJSON(&b)
		return b.String()
	}
	var pieces []string
	t.writeKeyval("", &pieces)
	return strings.Join(pieces, ",")
}

func (t *optTree) writeJSON(b *strings.Builder) {
	b.WriteByte('{')
	for i, m := range t.members {
		if i > 0 {
			b.WriteByte(',')
		}
		k, _ := json.Marshal(m.key)
		b.Write(k)
		b.WriteByte(':')
		switch {
		case m.sub != nil:
			m.sub.writeJSON(b)
		case m.raw != nil:
			b.Write(m.raw)
		case m.bare:
			b.WriteString("true")
		default:
			v, _ := json.Marshal(m.s)
			b.Write(v)
		}
	}
	b.WriteByte('}')
}

func (t *optTree) writeKeyval(prefix string, pieces *[]string) {
	for _, m := range t.members {
		k := prefix + m.key
		switch {
		case m.sub != nil:
			m.sub.writeKeyval(k+".", pieces)
		case m.bare:
			*pieces = append(*pieces, EscapeOptionValue(k))
		default:
			*pieces = append(*pieces, EscapeOptionValue(k)+"="+EscapeOptionValue(m.s))
		}
	}
}
