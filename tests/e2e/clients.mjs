// The official openai and @anthropic-ai/sdk npm clients against the daemon on a Unix
// socket (argv[2]), loaded from the folder scripts/npm-clients.sh installed them in (argv[3]). Every answer a client library parses is compared with what the raw
// HTTP answer says for the same body (temperature 0: the same text), streams with their
// blocking answers. Prints one "ok <name>" per check; exits 1 on the first failure.
import http from 'node:http';
import { createRequire } from 'node:module';
import path from 'node:path';
import { Readable } from 'node:stream';

const sock = process.argv[2];
const require = createRequire(path.resolve(process.argv[3], 'package.json'));
const OpenAI = require('openai').default ?? require('openai');
const Anthropic = require('@anthropic-ai/sdk').default ?? require('@anthropic-ai/sdk');

// fetch over the Unix socket, for both clients' `fetch` option.
function unixFetch(url, init = {}) {
  return new Promise((resolve, reject) => {
    const u = new URL(url);
    const headers = {};
    new Headers(init.headers || {}).forEach((v, k) => { headers[k] = v; });
    const req = http.request({ socketPath: sock, path: u.pathname + u.search, method: init.method || 'GET', headers },
      (res) => {
        const h = new Headers();
        for (const [k, v] of Object.entries(res.headers)) h.set(k, Array.isArray(v) ? v.join(', ') : String(v));
        resolve(new Response(Readable.toWeb(res), { status: res.statusCode, headers: h }));
      });
    req.on('error', reject);
    if (init.signal) init.signal.addEventListener('abort', () => req.destroy(new Error('aborted')));
    req.end(init.body === undefined || init.body === null ? undefined : init.body);
  });
}

async function raw(path, body) {
  const r = await unixFetch('http://localhost' + path, { method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body) });
  return { status: r.status, json: await r.json() };
}

function check(name, cond, detail) {
  if (!cond) {
    console.log(`FAIL ${name}: ${detail === undefined ? '' : JSON.stringify(detail)}`);
    process.exit(1);
  }
  console.log(`ok ${name}`);
}

const openai = new OpenAI({ apiKey: 'none', baseURL: 'http://localhost/v1', fetch: unixFetch, maxRetries: 0 });
const anthropic = new Anthropic({ apiKey: 'none', baseURL: 'http://localhost', fetch: unixFetch, maxRetries: 0 });

const msgs = [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'Hi there' }];
const base = { model: 'any', messages: msgs, max_tokens: 6, temperature: 0 };
const want = (await raw('/v1/chat/completions', base)).json.choices[0].message.content;

// ---- openai ----
const models = await openai.models.list();
check('openai models.list', models.data.length === 1, models.data);
const model = await openai.models.retrieve(models.data[0].id);
check('openai models.retrieve', model.id === models.data[0].id, model);

const chat = await openai.chat.completions.create(base);
check('openai chat', chat.choices[0].message.content === want, [chat.choices[0].message.content, want]);

let streamed = '';
let usage = null;
const stream = await openai.chat.completions.create({ ...base, stream: true, stream_options: { include_usage: true } });
for await (const chunk of stream) {
  if (chunk.choices.length && chunk.choices[0].delta.content) streamed += chunk.choices[0].delta.content;
  if (chunk.usage) usage = chunk.usage;
}
check('openai chat stream', streamed === want && usage && usage.completion_tokens >= 1, [streamed, want, usage]);

const tools = [{ type: 'function', function: { name: 'get_weather', description: 'Weather in a city',
  parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] } } }];
const toolBody = { model: 'any', max_tokens: 6, temperature: 0, tools, tool_choice: 'auto', parallel_tool_calls: true,
  messages: [{ role: 'user', content: 'Weather in Oslo?' },
    { role: 'assistant', content: null, tool_calls: [{ id: 'call_1', type: 'function',
      function: { name: 'get_weather', arguments: '{"city":"Oslo"}' } }] },
    { role: 'tool', tool_call_id: 'call_1', content: 'cold' }] };
const toolRaw = (await raw('/v1/chat/completions', toolBody)).json.choices[0];
const toolChat = await openai.chat.completions.create(toolBody);
check('openai chat with tools and a tool result', toolChat.choices[0].message.content === toolRaw.message.content &&
  ['stop', 'length', 'tool_calls'].includes(toolChat.choices[0].finish_reason), toolChat.choices[0]);

const lp = await openai.chat.completions.create({ ...base, logprobs: true, top_logprobs: 2 });
check('openai chat logprobs', lp.choices[0].logprobs.content.length === lp.usage.completion_tokens, lp.choices[0].logprobs);

const cmpl = await openai.completions.create({ model: 'any', prompt: 'Hello', max_tokens: 4, temperature: 0 });
const cmplRaw = (await raw('/v1/completions', { model: 'any', prompt: 'Hello', max_tokens: 4, temperature: 0 })).json;
check('openai completions', cmpl.choices[0].text === cmplRaw.choices[0].text, cmpl.choices[0]);

const resp = await openai.responses.create({ model: 'any', instructions: 'Be brief.', input: 'Hi there',
  max_output_tokens: 6, temperature: 0, store: false });
check('openai responses', resp.output_text === want, [resp.output_text, want]);
let rtext = '';
const rstream = await openai.responses.create({ model: 'any', instructions: 'Be brief.', input: 'Hi there',
  max_output_tokens: 6, temperature: 0, stream: true });
let rdone = null;
for await (const ev of rstream) {
  if (ev.type === 'response.output_text.delta') rtext += ev.delta;
  if (ev.type === 'response.completed' || ev.type === 'response.incomplete') rdone = ev.response;
}
check('openai responses stream', rtext === want && rdone, [rtext, want]);

try {
  await openai.chat.completions.create({ ...base, frobnicate: true });
  check('openai error', false, 'accepted an unknown field');
} catch (e) {
  check('openai error', e instanceof OpenAI.APIError && e.status === 400 && /frobnicate/.test(e.message), e.message);
}

// ---- anthropic ----
const abase = { model: 'any', max_tokens: 6, temperature: 0, system: 'Be brief.',
  messages: [{ role: 'user', content: 'Hi there' }] };
const amsg = await anthropic.messages.create(abase);
check('anthropic messages', amsg.content[0].type === 'text' && amsg.content[0].text === want, [amsg.content, want]);

const astream = anthropic.messages.stream(abase);
let atext = '';
astream.on('text', (t) => { atext += t; });
const afinal = await astream.finalMessage();
check('anthropic stream', atext === want && afinal.content[0].text === want &&
  ['end_turn', 'max_tokens'].includes(afinal.stop_reason), [atext, want, afinal.stop_reason]);

const atools = await anthropic.messages.create({ model: 'any', max_tokens: 6, temperature: 0,
  tools: [{ name: 'get_weather', description: 'Weather in a city',
    input_schema: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] } }],
  messages: [{ role: 'user', content: 'Weather in Oslo?' },
    { role: 'assistant', content: [{ type: 'tool_use', id: 'call_1', name: 'get_weather', input: { city: 'Oslo' } }] },
    { role: 'user', content: [{ type: 'tool_result', tool_use_id: 'call_1', content: 'cold' }] }] });
const atoolsText = atools.content.filter((b) => b.type === 'text').map((b) => b.text).join('');
const toolRawNoParallel = (await raw('/v1/chat/completions', { ...toolBody, parallel_tool_calls: undefined,
  tool_choice: undefined })).json.choices[0].message.content;
check('anthropic tools and a tool result prompt as the chat equivalent', atoolsText === (toolRawNoParallel || ''),
  [atools.content, toolRawNoParallel]);

// Forced calls: the random model must call, with arguments that fit the schema; the SDKs'
// own stream helpers assemble the streamed deltas into the same call.
const forcedSchema = { type: 'object', properties: { city: { type: 'string', maxLength: 10 },
  unit: { enum: ['c', 'f'] } }, required: ['city'], additionalProperties: false };
const fitsSchema = (a) => typeof a === 'object' && a !== null && typeof a.city === 'string' && [...a.city].length <= 10 && // code points, as JSON Schema counts
  Object.keys(a).every((k) => k === 'city' || (k === 'unit' && ['c', 'f'].includes(a.unit)));
const forcedBody = { model: 'any', max_tokens: 200, seed: 3, messages: [{ role: 'user', content: 'Weather in Oslo?' }],
  tools: [{ type: 'function', function: { name: 'get_weather', parameters: forcedSchema } }],
  tool_choice: { type: 'function', function: { name: 'get_weather' } } };
const forced = await openai.chat.completions.create(forcedBody);
const fcall = forced.choices[0].message.tool_calls?.[0];
check('openai forced tool call', forced.choices[0].finish_reason === 'tool_calls' && fcall?.function.name === 'get_weather' &&
  fitsSchema(JSON.parse(fcall.function.arguments)), forced.choices[0]);
const fstream = openai.beta.chat.completions.stream(forcedBody);
const ffinal = await fstream.finalChatCompletion();
const scall = ffinal.choices[0].message.tool_calls?.[0];
check('openai forced tool call streamed', scall?.function.name === 'get_weather' &&
  scall.function.arguments === fcall?.function.arguments, [scall, fcall]);

const aforcedBody = { model: 'any', max_tokens: 200, messages: [{ role: 'user', content: 'Weather in Oslo?' }],
  tools: [{ name: 'get_weather', input_schema: forcedSchema }], tool_choice: { type: 'tool', name: 'get_weather' } };
const aforced = await anthropic.messages.create(aforcedBody);
const ause = aforced.content.find((b) => b.type === 'tool_use');
check('anthropic forced tool_use', aforced.stop_reason === 'tool_use' && ause?.name === 'get_weather' &&
  fitsSchema(ause.input), aforced.content);
const afstream = anthropic.messages.stream(aforcedBody);
const affinal = await afstream.finalMessage();
const asuse = affinal.content.find((b) => b.type === 'tool_use');
check('anthropic forced tool_use streamed', affinal.stop_reason === 'tool_use' && asuse?.name === 'get_weather' &&
  fitsSchema(asuse.input), affinal.content);

try {
  await anthropic.messages.create({ model: 'any', messages: [{ role: 'user', content: 'x' }] });
  check('anthropic error', false, 'accepted a body without max_tokens');
} catch (e) {
  check('anthropic error', e instanceof Anthropic.BadRequestError && e.error?.error?.type === 'invalid_request_error',
    e.error);
}
console.log('all client checks passed');
