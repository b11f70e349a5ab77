// ollama_decode: a reference decoder for Ollama request bodies, used by
// drover's differential tests (drover's Rust JSON scanner vs Go's
// encoding/json as used by the Ollama HTTP server).
//
// Build (Go 1.19 or newer, standard library only; writes nothing into the repo):
//
//	cd /work/main/tests/go/ollama_decode && \
//	  GOFLAGS=-mod=mod GOTOOLCHAIN=local GOPATH=/tmp/gopath GOCACHE=/tmp/gocache \
//	  go build -o /tmp/ollama_decode .
//
// (Go 1.19 has no `go -C`, and /work/main has no go.mod, so build from this
// directory. From /work/main the equivalent is
// `GO111MODULE=off GOPATH=/tmp/gopath GOCACHE=/tmp/gocache go build -o /tmp/ollama_decode ./tests/go/ollama_decode`.)
//
// Input (stdin), one request per line:
//
//	<endpoint>\t<body, base64 standard encoding>
//
// endpoint is one of: chat generate embed embeddings show copy create delete pull push
//
// Output (stdout), exactly one JSON line per input line, in order:
//
//	{"error":"..."}                       the body does not decode (Ollama answers 400)
//	{"harness_error":"..."}               the input line itself is malformed
//	{"model":..., "source":..., ...}      the body decodes; fields below
//
// Fields of a successful decode:
//
//	model        string: the name the handler goes on with (copy: the source),
//	             untrimmed, before Ollama's own name parsing (TrimSpace,
//	             ":cloud"/":local" suffixes, defaults, case canonicalisation).
//	source, destination   copy only, else null.
//	from         create only (Go string, "" when absent), else null.
//	stream       true/false/null (*bool); null for endpoints without a stream field.
//	keep_alive   raw JSON text of keep_alive, as a JSON string; null when absent/null.
//	num_ctx, temperature, seed   raw JSON text of options[<key>], as a JSON
//	             string (e.g. "4096", "\"4096\"", "null"); null when the key is absent.
//	asks         chat: len(messages)>0; generate, embeddings: prompt!="";
//	             embed: input is a non-empty string or non-empty array; else false.
//	remote_host, files, adapters, draft_files, quantize   create only, else null.
//	trailing     true when non-whitespace bytes follow the first JSON value
//	             (gin ignores them; json.Unmarshal would reject them).
//
// Decoding mirrors the Ollama server: gin's ShouldBindJSON runs
// json.NewDecoder(body).Decode(&req) (one value; trailing bytes ignored; an
// empty body is io.EOF = "missing request body"), into structs with the same
// json tags and Go types as ollama/api/types.go, including equivalents of the
// custom UnmarshalJSON methods (Duration, ThinkValue, Message, PropertyType,
// and the jsonparser-backed ordered maps) so that accept/reject matches.
// Pass -strict to use json.Unmarshal (whole input must be one value) instead.
// Error message texts differ between Go versions; compare error-vs-no-error only.
package main

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"strings"
	"time"
	"unicode/utf8"
)

// ---------------------------------------------------------------------------
// Custom value types (behavioural equivalents of Ollama's).

// keepAlive mirrors api.Duration's decoding: a number (seconds, negative =
// forever) or a time.ParseDuration string; anything else is an error. The raw
// JSON text is kept for the report. Used as *keepAlive, so a JSON null leaves
// the pointer nil without calling UnmarshalJSON (as for *api.Duration).
type keepAlive struct {
	raw []byte
	d   time.Duration
}

func (k *keepAlive) UnmarshalJSON(b []byte) error {
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	k.raw = append(k.raw[:0], b...)
	k.d = 5 * time.Minute
	switch t := v.(type) {
	case float64:
		if t < 0 {
			k.d = time.Duration(math.MaxInt64)
		} else {
			k.d = time.Duration(t * float64(time.Second))
		}
	case string:
		d, err := time.ParseDuration(t)
		if err != nil {
			return err
		}
		if d < 0 {
			d = time.Duration(math.MaxInt64)
		}
		k.d = d
	default:
		return fmt.Errorf("keep_alive: unsupported JSON type %T", v)
	}
	return nil
}

// thinkValue mirrors api.ThinkValue: a bool, or one of four strings.
type thinkValue struct{ v any }

func (t *thinkValue) UnmarshalJSON(b []byte) error {
	var flag bool
	if json.Unmarshal(b, &flag) == nil {
		t.v = flag
		return nil
	}
	var s string
	if json.Unmarshal(b, &s) == nil {
		switch s {
		case "high", "medium", "low", "max":
			t.v = s
			return nil
		}
		return fmt.Errorf("invalid think value %q", s)
	}
	return errors.New("think must be a boolean or string")
}

// optMap stands in for `map[string]any` (Options, Parameters...): same
// acceptance, same merge-on-duplicate-key behaviour as encoding/json v1 has for
// a map field (a second "options" object adds to the first; null resets it),
// and it also keeps every value's raw text.
type optMap struct {
	vals map[string]any
	raw  map[string]json.RawMessage
}

func (m *optMap) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		m.vals, m.raw = nil, nil
		return nil
	}
	var vals map[string]any
	if err := json.Unmarshal(b, &vals); err != nil {
		return err
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return err
	}
	if m.vals == nil {
		m.vals = map[string]any{}
		m.raw = map[string]json.RawMessage{}
	}
	for k, v := range vals {
		m.vals[k] = v
	}
	for k, v := range raw {
		m.raw[k] = v
	}
	return nil
}

func (m *optMap) rawText(key string) *string {
	if m == nil || m.raw == nil {
		return nil
	}
	r, ok := m.raw[key]
	if !ok {
		return nil
	}
	s := string(r)
	return &s
}

type imageData []byte

// message mirrors api.Message (its UnmarshalJSON decodes a plain copy, then
// lower-cases Role).
type message struct {
	Role       string      `json:"role"`
	Content    string      `json:"content"`
	Thinking   string      `json:"thinking,omitempty"`
	Images     []imageData `json:"images,omitempty"`
	ToolCalls  []toolCall  `json:"tool_calls,omitempty"`
	ToolName   string      `json:"tool_name,omitempty"`
	ToolCallID string      `json:"tool_call_id,omitempty"`
}

func (m *message) UnmarshalJSON(b []byte) error {
	type plain message
	var p plain
	if err := json.Unmarshal(b, &p); err != nil {
		return err
	}
	*m = message(p)
	m.Role = strings.ToLower(m.Role)
	return nil
}

type toolCall struct {
	ID       string           `json:"id,omitempty"`
	Function toolCallFunction `json:"function"`
}

type toolCallFunction struct {
	Index     int         `json:"index"`
	Name      string      `json:"name"`
	Arguments orderedArgs `json:"arguments"`
}

// orderedArgs mirrors api.ToolCallFunctionArguments, an ordered map decoded
// by wk8/go-ordered-map + buger/jsonparser (not by encoding/json). It is a
// non-pointer field, so even a JSON null reaches UnmarshalJSON and is refused.
type orderedArgs struct{ n int }

func (o *orderedArgs) UnmarshalJSON(b []byte) error {
	o.n = 0
	return eachMemberLikeJSONParser(b, func(key string, val []byte) error {
		var v any
		o.n++
		return json.Unmarshal(val, &v)
	})
}

type tool struct {
	Type     string       `json:"type"`
	Items    any          `json:"items,omitempty"`
	Function toolFunction `json:"function"`
}

type toolFunction struct {
	Name        string                 `json:"name"`
	Description string                 `json:"description,omitempty"`
	Parameters  toolFunctionParameters `json:"parameters"`
}

type toolFunctionParameters struct {
	Type       string             `json:"type"`
	Defs       any                `json:"$defs,omitempty"`
	Items      any                `json:"items,omitempty"`
	Required   []string           `json:"required,omitempty"`
	Properties *toolPropertiesMap `json:"properties"`
}

// toolPropertiesMap mirrors api.ToolPropertiesMap (ordered map of
// ToolProperty, decoded through jsonparser; used by pointer, so null = nil).
type toolPropertiesMap struct{ n int }

func (t *toolPropertiesMap) UnmarshalJSON(b []byte) error {
	t.n = 0
	return eachMemberLikeJSONParser(b, func(key string, val []byte) error {
		var p toolProperty
		t.n++
		return json.Unmarshal(val, &p)
	})
}

type toolProperty struct {
	AnyOf       []toolProperty     `json:"anyOf,omitempty"`
	Type        propertyType       `json:"type,omitempty"`
	Items       any                `json:"items,omitempty"`
	Description string             `json:"description,omitempty"`
	Enum        []any              `json:"enum,omitempty"`
	Properties  *toolPropertiesMap `json:"properties,omitempty"`
	Required    []string           `json:"required,omitempty"`
}

// propertyType mirrors api.PropertyType: a string, else an array of strings.
type propertyType []string

func (p *propertyType) UnmarshalJSON(b []byte) error {
	var one string
	if json.Unmarshal(b, &one) == nil {
		*p = []string{one}
		return nil
	}
	var many []string
	if err := json.Unmarshal(b, &many); err != nil {
		return err
	}
	*p = many
	return nil
}

// eachMemberLikeJSONParser walks a JSON object (already validated by
// encoding/json) the way jsonparser.ObjectEach + wk8's UnmarshalJSON do:
// the value must be an object (null and non-objects are errors), keys are
// unescaped with jsonparser's rules and must then be valid UTF-8.
func eachMemberLikeJSONParser(b []byte, fn func(key string, val []byte) error) error {
	errMalformed := errors.New("malformed object")
	i := skipWS(b, 0)
	if i >= len(b) || b[i] != '{' {
		return errMalformed
	}
	i = skipWS(b, i+1)
	if i >= len(b) {
		return errMalformed
	}
	if b[i] == '}' {
		return nil
	}
	for {
		if i >= len(b) || b[i] != '"' {
			return errMalformed
		}
		j := i + 1
		for j < len(b) && b[j] != '"' {
			if b[j] == '\\' {
				j++
			}
			j++
		}
		if j >= len(b) {
			return errMalformed
		}
		key, ok := unescapeLikeJSONParser(b[i+1 : j])
		if !ok {
			return errors.New("malformed string escape")
		}
		if !utf8.Valid(key) {
			return fmt.Errorf("not a valid UTF-8 string: %q", key)
		}
		i = skipWS(b, j+1)
		if i >= len(b) || b[i] != ':' {
			return errMalformed
		}
		i = skipWS(b, i+1)
		dec := json.NewDecoder(bytes.NewReader(b[i:]))
		var val json.RawMessage
		if err := dec.Decode(&val); err != nil {
			return err
		}
		i += int(dec.InputOffset())
		if err := fn(string(key), val); err != nil {
			return err
		}
		i = skipWS(b, i)
		if i >= len(b) {
			return errMalformed
		}
		switch b[i] {
		case '}':
			return nil
		case ',':
			i = skipWS(b, i+1)
		default:
			return errMalformed
		}
	}
}

func skipWS(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

func hexRune(b []byte) (rune, bool) {
	if len(b) < 4 {
		return 0, false
	}
	var r rune
	for _, c := range b[:4] {
		switch {
		case '0' <= c && c <= '9':
			r = r<<4 | rune(c-'0')
		case 'a' <= c && c <= 'f':
			r = r<<4 | rune(c-'a'+10)
		case 'A' <= c && c <= 'F':
			r = r<<4 | rune(c-'A'+10)
		default:
			return 0, false
		}
	}
	return r, true
}

// unescapeLikeJSONParser follows jsonparser v1.1.1's Unescape: a \u escape in
// D800..DFFF must be followed by six more bytes whose last four are hex (the
// "\u" of the second escape is not checked) with a value >= DC00; otherwise the
// key is refused (encoding/json instead substitutes U+FFFD).
func unescapeLikeJSONParser(in []byte) ([]byte, bool) {
	if bytes.IndexByte(in, '\\') < 0 {
		return in, true
	}
	out := make([]byte, 0, len(in))
	for len(in) > 0 {
		c := in[0]
		if c != '\\' {
			out = append(out, c)
			in = in[1:]
			continue
		}
		if len(in) < 2 {
			return nil, false
		}
		switch e := in[1]; e {
		case '"', '\\', '/':
			out = append(out, e)
			in = in[2:]
		case 'b':
			out, in = append(out, '\b'), in[2:]
		case 'f':
			out, in = append(out, '\f'), in[2:]
		case 'n':
			out, in = append(out, '\n'), in[2:]
		case 'r':
			out, in = append(out, '\r'), in[2:]
		case 't':
			out, in = append(out, '\t'), in[2:]
		case 'u':
			r, ok := hexRune(in[2:])
			if !ok {
				return nil, false
			}
			if r < 0xD800 || r > 0xDFFF {
				out = utf8.AppendRune(out, r)
				in = in[6:]
				break
			}
			if len(in) < 12 {
				return nil, false
			}
			r2, ok := hexRune(in[8:])
			if !ok || r2 < 0xDC00 {
				return nil, false
			}
			out = utf8.AppendRune(out, 0x10000+(r-0xD800)<<10+(r2-0xDC00))
			in = in[12:]
		default:
			return nil, false
		}
	}
	return out, true
}

// ---------------------------------------------------------------------------
// Request types: same json tags and Go types as ollama/api/types.go.

type generateRequest struct {
	Model           string          `json:"model"`
	Prompt          string          `json:"prompt"`
	Suffix          string          `json:"suffix"`
	System          string          `json:"system"`
	Template        string          `json:"template"`
	Context         []int           `json:"context,omitempty"`
	Stream          *bool           `json:"stream,omitempty"`
	Raw             bool            `json:"raw,omitempty"`
	Format          json.RawMessage `json:"format,omitempty"`
	KeepAlive       *keepAlive      `json:"keep_alive,omitempty"`
	Images          []imageData     `json:"images,omitempty"`
	Options         optMap          `json:"options"`
	Think           *thinkValue     `json:"think,omitempty"`
	Truncate        *bool           `json:"truncate,omitempty"`
	Shift           *bool           `json:"shift,omitempty"`
	DebugRenderOnly bool            `json:"_debug_render_only,omitempty"`
	Logprobs        bool            `json:"logprobs,omitempty"`
	TopLogprobs     int             `json:"top_logprobs,omitempty"`
}

type chatRequest struct {
	Model           string          `json:"model"`
	Messages        []message       `json:"messages"`
	Stream          *bool           `json:"stream,omitempty"`
	Format          json.RawMessage `json:"format,omitempty"`
	KeepAlive       *keepAlive      `json:"keep_alive,omitempty"`
	Tools           []tool          `json:"tools,omitempty"` // embedded `Tools` with this tag in Ollama
	Options         optMap          `json:"options"`
	Think           *thinkValue     `json:"think,omitempty"`
	Truncate        *bool           `json:"truncate,omitempty"`
	Shift           *bool           `json:"shift,omitempty"`
	DebugRenderOnly bool            `json:"_debug_render_only,omitempty"`
	Logprobs        bool            `json:"logprobs,omitempty"`
	TopLogprobs     int             `json:"top_logprobs,omitempty"`
}

type embedRequest struct {
	Model      string     `json:"model"`
	Input      any        `json:"input"`
	KeepAlive  *keepAlive `json:"keep_alive,omitempty"`
	Truncate   *bool      `json:"truncate,omitempty"`
	Dimensions int        `json:"dimensions,omitempty"`
	Options    optMap     `json:"options"`
}

type embeddingRequest struct {
	Model     string     `json:"model"`
	Prompt    string     `json:"prompt"`
	KeepAlive *keepAlive `json:"keep_alive,omitempty"`
	Options   optMap     `json:"options"`
}

type createRequest struct {
	Model         string            `json:"model"`
	Stream        *bool             `json:"stream,omitempty"`
	Quantize      string            `json:"quantize,omitempty"`
	DraftQuantize string            `json:"draft_quantize,omitempty"`
	From          string            `json:"from,omitempty"`
	RemoteHost    string            `json:"remote_host,omitempty"`
	Files         map[string]string `json:"files,omitempty"`
	DraftFiles    map[string]string `json:"draft_files,omitempty"`
	Adapters      map[string]string `json:"adapters,omitempty"`
	Template      string            `json:"template,omitempty"`
	License       any               `json:"license,omitempty"`
	System        string            `json:"system,omitempty"`
	Parameters    map[string]any    `json:"parameters,omitempty"`
	Messages      []message         `json:"messages,omitempty"`
	Renderer      string            `json:"renderer,omitempty"`
	Parser        string            `json:"parser,omitempty"`
	Requires      string            `json:"requires,omitempty"`
	Info          map[string]any    `json:"info,omitempty"`
	Name          string            `json:"name"`
	Quantization  string            `json:"quantization,omitempty"`
}

type deleteRequest struct {
	Model string `json:"model"`
	Name  string `json:"name"`
}

type showRequest struct {
	Model    string `json:"model"`
	System   string `json:"system"`
	Template string `json:"template"`
	Verbose  bool   `json:"verbose"`
	Options  optMap `json:"options"`
	Name     string `json:"name"`
}

type copyRequest struct {
	Source      string `json:"source"`
	Destination string `json:"destination"`
}

// pullRequest is also PushRequest (same fields and tags).
type pullRequest struct {
	Model    string `json:"model"`
	Insecure bool   `json:"insecure,omitempty"`
	Username string `json:"username"`
	Password string `json:"password"`
	Stream   *bool  `json:"stream,omitempty"`
	Name     string `json:"name"`
}

// ---------------------------------------------------------------------------

type result struct {
	Model       string            `json:"model"`
	Source      *string           `json:"source"`
	Destination *string           `json:"destination"`
	From        *string           `json:"from"`
	Stream      *bool             `json:"stream"`
	KeepAlive   *string           `json:"keep_alive"`
	NumCtx      *string           `json:"num_ctx"`
	Temperature *string           `json:"temperature"`
	Seed        *string           `json:"seed"`
	Asks        bool              `json:"asks"`
	RemoteHost  *string           `json:"remote_host"`
	Files       map[string]string `json:"files"`
	Adapters    map[string]string `json:"adapters"`
	DraftFiles  map[string]string `json:"draft_files"`
	Quantize    *string           `json:"quantize"`
	Trailing    bool              `json:"trailing"`
}

var strict = flag.Bool("strict", false, "decode with json.Unmarshal (reject trailing data) instead of gin's json.Decoder.Decode")

// decode reproduces gin's ShouldBindJSON: json.NewDecoder(body).Decode(v).
// It reports whether non-whitespace bytes follow the decoded value.
func decode(body []byte, v any) (trailing bool, err error) {
	if *strict {
		err = json.Unmarshal(body, v)
		return false, err
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	if err = dec.Decode(v); err != nil {
		return false, err
	}
	rest := body[dec.InputOffset():]
	return len(bytes.TrimLeft(rest, " \t\r\n")) > 0, nil
}

func ka(k *keepAlive) *string {
	if k == nil {
		return nil
	}
	s := string(k.raw)
	return &s
}

func str(s string) *string { return &s }

func withOptions(r *result, o *optMap) {
	r.NumCtx = o.rawText("num_ctx")
	r.Temperature = o.rawText("temperature")
	r.Seed = o.rawText("seed")
}

func process(endpoint string, body []byte) (out any) {
	defer func() {
		if p := recover(); p != nil {
			out = map[string]string{"error": fmt.Sprintf("panic: %v", p)}
		}
	}()
	var r result
	var err error
	switch endpoint {
	case "generate":
		var q generateRequest
		if r.Trailing, err = decode(body, &q); err == nil {
			r.Model, r.Stream, r.KeepAlive, r.Asks = q.Model, q.Stream, ka(q.KeepAlive), q.Prompt != ""
			withOptions(&r, &q.Options)
		}
	case "chat":
		var q chatRequest
		if r.Trailing, err = decode(body, &q); err == nil {
			r.Model, r.Stream, r.KeepAlive, r.Asks = q.Model, q.Stream, ka(q.KeepAlive), len(q.Messages) > 0
			withOptions(&r, &q.Options)
		}
	case "embed":
		var q embedRequest
		if r.Trailing, err = decode(body, &q); err == nil {
			r.Model, r.KeepAlive = q.Model, ka(q.KeepAlive)
			switch in := q.Input.(type) {
			case string:
				r.Asks = in != ""
			case []any:
				r.Asks = len(in) > 0
			}
			withOptions(&r, &q.Options)
		}
	case "embeddings":
		var q embeddingRequest
		if r.Trailing, err = decode(body, &q); err == nil {
			r.Model, r.KeepAlive, r.Asks = q.Model, ka(q.KeepAlive), q.Prompt != ""
			withOptions(&r, &q.Options)
		}
	case "show":
		var q showRequest
		if r.Trailing, err = decode(body, &q); err == nil {
			// ShowHandler: Model if non-empty, else Name.
			r.Model = q.Model
			if r.Model == "" {
				r.Model = q.Name
			}
			withOptions(&r, &q.Options)
		}
	case "copy":
		var q copyRequest
		if r.Trailing, err = decode(body, &q); err == nil {
			r.Model, r.Source, r.Destination = q.Source, str(q.Source), str(q.Destination)
		}
	case "create":
		var q createRequest
		if r.Trailing, err = decode(body, &q); err == nil {
			// CreateHandler: cmp.Or(r.Model, r.Name).
			r.Model = q.Model
			if r.Model == "" {
				r.Model = q.Name
			}
			r.Stream, r.From, r.RemoteHost = q.Stream, str(q.From), str(q.RemoteHost)
			r.Files, r.Adapters, r.DraftFiles = q.Files, q.Adapters, q.DraftFiles
			// createModel: strings.ToUpper(cmp.Or(r.Quantize, r.Quantization)).
			qz := q.Quantize
			if qz == "" {
				qz = q.Quantization
			}
			r.Quantize = str(qz)
		}
	case "delete", "pull", "push":
		var q pullRequest
		if endpoint == "delete" {
			var d deleteRequest
			if r.Trailing, err = decode(body, &d); err == nil {
				q.Model, q.Name = d.Model, d.Name
			}
		} else {
			r.Trailing, err = decode(body, &q)
		}
		if err == nil {
			// cmp.Or(Model, Name) (delete, pull); push: Model if != "" else Name.
			r.Model = q.Model
			if r.Model == "" {
				r.Model = q.Name
			}
			if endpoint != "delete" {
				r.Stream = q.Stream
			}
		}
	default:
		return map[string]string{"harness_error": "unknown endpoint " + fmt.Sprintf("%q", endpoint)}
	}
	if err != nil {
		return map[string]string{"error": err.Error()}
	}
	return r
}

func handleLine(line []byte) any {
	tab := bytes.IndexByte(line, '\t')
	if tab < 0 {
		return map[string]string{"harness_error": "no tab in input line"}
	}
	enc := bytes.TrimSpace(line[tab+1:])
	body := make([]byte, base64.StdEncoding.DecodedLen(len(enc)))
	n, err := base64.StdEncoding.Decode(body, enc)
	if err != nil {
		body = make([]byte, base64.RawStdEncoding.DecodedLen(len(enc)))
		if n, err = base64.RawStdEncoding.Decode(body, enc); err != nil {
			return map[string]string{"harness_error": "bad base64: " + err.Error()}
		}
	}
	return process(string(bytes.TrimSpace(line[:tab])), body[:n])
}

func main() {
	flag.Parse()
	in := bufio.NewReaderSize(os.Stdin, 1<<20)
	w := bufio.NewWriterSize(os.Stdout, 1<<16)
	defer w.Flush()
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	for {
		line, rerr := in.ReadBytes('\n')
		if len(line) > 0 {
			line = bytes.TrimRight(line, "\r\n")
			var out any
			func() {
				defer func() {
					if p := recover(); p != nil {
						out = map[string]string{"harness_error": fmt.Sprintf("panic: %v", p)}
					}
				}()
				out = handleLine(line)
			}()
			if err := enc.Encode(out); err != nil {
				fmt.Fprintf(w, "{\"harness_error\":%q}\n", "encode: "+err.Error())
			}
			// Flush whenever no more input is buffered, so the tool also
			// works as an interactive line-by-line co-process.
			if in.Buffered() == 0 {
				w.Flush()
			}
		}
		if rerr != nil {
			if rerr != io.EOF {
				fmt.Fprintf(w, "{\"harness_error\":%q}\n", "read: "+rerr.Error())
			}
			break
		}
	}
}
