// The generated checkpoint's chat template (our own Jinja), rendering MiniMax-M2's chat format: a system block
// (with the tools list), user/ai/tool turns closed by [e~[, reasoning kept only after the last user turn, tool
// calls as <minimax:tool_call> XML, and the generation prompt "]~b]ai\n<think>\n". Every tag trims whitespace,
// so the template's own layout never leaks into the prompt.

export const BOS_TOKEN = "]~!b[";
export const EOS_TOKEN = "[e~[";
export const ROLE_TOKEN = "]~b]";

/** Special tokens of the format, in id order after the BPE vocabulary. */
export const SPECIAL_TOKENS = [
  BOS_TOKEN,
  ROLE_TOKEN,
  EOS_TOKEN,
  "<think>",
  "</think>",
  "<minimax:tool_call>",
  "</minimax:tool_call>",
] as const;

export const GENERATION_PROMPT = "]~b]ai\n<think>\n";

const TOOLS_PREAMBLE =
  "\\n\\n# Tools\\nYou may call one or more tools to assist with the user query.\\n" +
  "Here are the tools available in JSONSchema format:\\n\\n<tools>\\n";
const TOOLS_EXAMPLE =
  "</tools>\\n\\nWhen making tool calls, use XML format to invoke tools and pass parameters:\\n\\n" +
  '<minimax:tool_call>\\n<invoke name=\\"tool-name-1\\">\\n' +
  '<parameter name=\\"param-key-1\\">param-value-1</parameter>\\n' +
  '<parameter name=\\"param-key-2\\">param-value-2</parameter>\\n...\\n</invoke>\\n</minimax:tool_call>';

export const CHAT_TEMPLATE = `{#- MiniMax-M2 chat format (studio-cluster's generated checkpoints). -#}
{%- macro text_of(content) -%}
  {%- if content is string -%}
    {{- content -}}
  {%- elif content is iterable and content is not mapping -%}
    {%- for part in content -%}
      {%- if part is mapping and part.type == 'text' -%}
        {{- part.text -}}
      {%- elif part is string -%}
        {{- part -}}
      {%- endif -%}
    {%- endfor -%}
  {%- elif content is not none -%}
    {{- content -}}
  {%- endif -%}
{%- endmacro -%}
{#- A leading system or developer message becomes the system block. -#}
{%- if messages and messages[0].role in ['system', 'developer'] -%}
  {%- set system = messages[0] -%}
  {%- set turns = messages[1:] -%}
{%- else -%}
  {%- set system = none -%}
  {%- set turns = messages -%}
{%- endif -%}
{%- set state = namespace(last_user=-1, called=false) -%}
{%- for m in turns -%}
  {%- if m.role == 'user' -%}
    {%- set state.last_user = loop.index0 -%}
  {%- endif -%}
{%- endfor -%}
{{- '${BOS_TOKEN}${ROLE_TOKEN}system\\n' -}}
{%- if system and system.content -%}
  {{- text_of(system.content) -}}
{%- elif model_identity is defined -%}
  {{- model_identity -}}
{%- else -%}
  {{- 'You are a helpful assistant.' -}}
{%- endif -%}
{%- if system and system.current_date -%}
  {{- '\\nCurrent date: ' ~ system.current_date -}}
{%- endif -%}
{%- if system and system.current_location -%}
  {{- '\\nCurrent location: ' ~ system.current_location -}}
{%- endif -%}
{%- if tools -%}
  {{- '${TOOLS_PREAMBLE}' -}}
  {%- for tool in tools -%}
    {{- '<tool>' ~ (tool.function | tojson) ~ '</tool>\\n' -}}
  {%- endfor -%}
  {{- '${TOOLS_EXAMPLE}' -}}
{%- endif -%}
{{- '${EOS_TOKEN}\\n' -}}
{%- for m in turns -%}
  {%- if m.role == 'user' -%}
    {{- '${ROLE_TOKEN}user\\n' ~ text_of(m.content) ~ '${EOS_TOKEN}\\n' -}}
  {%- elif m.role == 'assistant' -%}
    {%- set content = text_of(m.content) -%}
    {%- set reasoning = '' -%}
    {%- if m.reasoning_content is string -%}
      {%- set reasoning = m.reasoning_content -%}
    {%- elif '</think>' in content -%}
      {#- Reasoning inlined in the content: <think>r</think>c -#}
      {%- set reasoning = (content.split('</think>')[0].strip('\\n').split('<think>') | last).strip('\\n') -%}
      {%- set content = (content.split('</think>') | last).strip('\\n') -%}
    {%- endif -%}
    {{- '${ROLE_TOKEN}ai\\n' -}}
    {%- if reasoning and loop.index0 > state.last_user -%}
      {{- '<think>\\n' ~ reasoning ~ '\\n</think>\\n\\n' -}}
    {%- endif -%}
    {{- content -}}
    {%- if m.tool_calls -%}
      {{- '\\n<minimax:tool_call>\\n' -}}
      {%- for call in m.tool_calls -%}
        {%- set fn = call.function if call.function else call -%}
        {{- '<invoke name="' ~ fn.name ~ '">\\n' -}}
        {%- if fn.arguments is mapping -%}
          {%- for key, value in fn.arguments | items -%}
            {{- '<parameter name="' ~ key ~ '">' ~ (value if value is string else value | tojson) ~ '</parameter>\\n' -}}
          {%- endfor -%}
        {%- endif -%}
        {{- '</invoke>\\n' -}}
      {%- endfor -%}
      {{- '</minimax:tool_call>\\n' -}}
      {%- set state.called = true -%}
    {%- else -%}
      {%- set state.called = false -%}
    {%- endif -%}
    {{- '${EOS_TOKEN}\\n' -}}
  {%- elif m.role == 'tool' -%}
    {%- if not state.called -%}
      {{- raise_exception('a tool message must follow an assistant message with tool calls') -}}
    {%- endif -%}
    {%- if loop.first or turns[loop.index0 - 1].role != 'tool' -%}
      {{- '${ROLE_TOKEN}tool' -}}
    {%- endif -%}
    {%- if m.content is string -%}
      {{- '\\n<response>' ~ m.content ~ '</response>' -}}
    {%- else -%}
      {%- for part in m.content -%}
        {%- if part.output is defined -%}
          {{- '\\n<response>' ~ part.output ~ '\\n</response>' -}}
        {%- elif part.type == 'text' and part.text is defined -%}
          {{- '\\n<response>' ~ part.text ~ '\\n</response>' -}}
        {%- else -%}
          {{- '\\n<response>' ~ part ~ '\\n</response>' -}}
        {%- endif -%}
      {%- endfor -%}
    {%- endif -%}
    {%- if loop.last or turns[loop.index0 + 1].role != 'tool' -%}
      {{- '${EOS_TOKEN}\\n' -}}
    {%- endif -%}
  {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
  {{- '${GENERATION_PROMPT.replace(/\n/g, "\\n")}' -}}
{%- endif -%}
`;
