// Word lists for the tokenizer's training corpus (written for this project). Ordered roughly by how common
// the words are, so that a Zipf-like sampler favours the first ones.

export const FUNCTION_WORDS = `the of and to a in is it you that he was for on are with as I his they be at one have this
from or had by not but what some we can out other were all there when up use your how said an each she which do
their time if will way about many then them write would like so these her long make thing see him two has look more
day could go come did number sound no most people my over know water than call first who may down side been now find
any new work part take get place made live where after back little only round man year came show every good me give
our under name very through just form sentence great think say help low line differ turn cause much mean before move
right boy old too same tell does set three want air well also play small end put home read hand port large spell add
even land here must big high such follow act why ask men change went light kind off need house picture try us again
animal point mother world near build self earth father head stand own page should country found answer school grow
study still learn plant cover food sun four between state keep eye never last let thought city tree cross farm hard
start might story saw far sea draw left late run while press close night real life few north open seem together next
white children begin got walk example ease paper group always music those both mark often letter until mile river car
feet care second book carry took science eat room friend began idea fish mountain stop once base hear horse cut sure
watch color face wood main enough plain girl usual young ready above ever red list though feel talk bird soon body dog
family direct pose leave song measure door product black short numeral class wind question happen complete ship area
half rock order fire south problem piece told knew pass since top whole king space heard best hour better true during
hundred five remember step early hold west ground interest reach fast verb sing listen six table travel less morning
ten simple several vowel toward war lay against pattern slow center love person money serve appear road map rain rule
govern pull cold notice voice unit power town fine certain fly fall lead cry dark machine note wait plan figure star
box noun field rest correct able pound done beauty drive stood contain front teach week final gave green oh quick
develop ocean warm free minute strong special mind behind clear tail produce fact street inch multiply nothing course
stay wheel full force blue object decide surface deep moon island foot system busy test record boat common gold
possible plane stead dry wonder laugh thousand ago ran check game shape equate hot miss brought heat snow tire bring
yes distant fill east paint language among grand ball yet wave drop heart am present heavy dance engine position arm
wide sail material size vary settle speak weight general ice matter circle pair include divide syllable felt perhaps
pick sudden count square reason length represent art subject region energy hunt probable bed brother egg ride cell
believe fraction forest sit race window store summer train sleep prove lone leg exercise wall catch mount wish sky
board joy winter sat written wild instrument kept glass grass cow job edge sign visit past soft fun bright gas weather
month million bear finish happy hope flower clothe strange gone jump baby eight village meet root buy raise solve
metal whether push seven paragraph third shall held hair describe cook floor either result burn hill safe cat century
consider type law bit coast copy phrase silent tall sand soil roll temperature finger industry value fight lie beat
excite natural view sense ear else quite broke case middle kill son lake moment scale loud spring observe child
straight consonant nation dictionary milk speed method organ pay age section dress cloud surprise quiet stone tiny
climb cool design poor lot experiment bottom key iron single stick flat twenty skin smile crease hole trade melody
trip office receive row mouth exact symbol die least trouble shout except wrote seed tone join suggest clean break
lady yard rise bad blow oil blood touch grew cent mix team wire cost lost brown wear garden equal sent choose fell fit
flow fair bank collect save control decimal gentle woman captain practice separate difficult doctor please protect
noon whose locate ring character insect caught period indicate radio spoke atom human history effect electric expect
crop modern element hit student corner party supply bone rail imagine provide agree thus capital chair danger fruit
rich thick soldier process operate guess necessary sharp wing create neighbor wash bat rather crowd corn compare poem
string bell depend meat rub tube famous dollar stream fear sight thin triangle planet hurry chief colony clock mine tie
enter major fresh search send yellow gun allow print dead spot desert suit current lift rose continue block chart hat
sell success company subtract event particular deal swim term opposite wife shoe shoulder spread arrange camp invent
cotton born determine quart nine truck noise level chance gather shop stretch throw shine property column molecule
select wrong gray repeat require broad prepare salt nose plural anger claim continent oxygen sugar death pretty skill
women season solution magnet silver thank branch match suffix especially fig afraid huge sister steel discuss forward
similar guide experience score apple bought led pitch coat mass card band rope slip win dream evening condition feed
tool total basic smell valley nor double seat arrive master track parent shore division sheet substance favor connect
post spend chord fat glad original share station dad bread charge proper bar offer segment slave duck instant market
degree populate chick dear enemy reply drink occur support speech nature range steam motion path liquid log meant
quotient teeth shell neck`;

export const EXTRA_WORDS = `about above across actually add added adding additional address after again against allowed
almost alone along already although always among another anything anyway anywhere appropriate around available
avoid aware away because become becomes before behavior being below beside best better between beyond both briefly
cannot careful carefully certain clearly completely concise could currently default depending describe describes
described details directly does doing done during each earlier either else elsewhere empty enough entire entirely
especially every everything exactly except existing explicitly fails first following for from further given going
however ignore ignored immediately important include included includes including instead into itself just later
least less likely many matching maybe might more most mostly much must necessary neither never next none normally
nothing now often only optional optionally otherwise ours output outside over own particular per perhaps please
possible possibly previous previously prefer preferred probably quickly rather really recent recently regardless
relevant remaining required requires respond response returns same several should shown similar simply since
single small so some someone something sometimes soon specific still such suitable supported sure than that their
them themselves then there therefore these they this those though through thus together too toward unless until
upon used useful user users using usually various very via what whatever when whenever where whether which while
who whole whom why will with within without would yet your yours yourself`;

export const TECH_WORDS = `file files path paths directory directories folder folders workspace repository repo
command commands shell terminal process processes session sessions agent agents tool tools schema schemas
function functions parameter parameters argument arguments option options config configuration setting settings
server servers client clients request requests response responses message messages channel channels gateway
browser page pages tab tabs window screen screenshot snapshot image images video audio text content contents
string strings number numbers integer boolean object objects array arrays list lists map value values key keys
type types field fields property properties name names description descriptions default required optional enum
format input inputs output outputs result results error errors warning warnings status state code codes exit
return returns call calls invoke invoked run runs running execute executes executed exec spawn spawned kill
start started stop stopped restart restarted wait waiting timeout timeouts retry retries limit limits maximum
minimum max min count size length offset cursor token tokens model models provider providers reasoning
thinking memory memories context prompt prompts system systems user assistant developer instructions instruction
policy policies permission permissions access allow allowed deny denied approve approval approved security
secret secrets credential credentials password authentication auth login account accounts profile profiles
network networks host hosts port ports address url urls link links http https api endpoint endpoints web
search query queries fetch fetched download upload send sent receive received reply replies deliver delivery
event events hook hooks trigger triggers schedule scheduled scheduler cron job jobs task tasks queue queued
background foreground loop loops timer timers reminder reminders notification notifications alert alerts
node nodes device devices remote local cluster machine machines platform linux macos windows ios android
install installed update updated upgrade version versions release build builds test tests testing debug
log logs logging trace metrics monitor health check checks verify validate validation parse parser parsing
read reads write writes edit edits edited patch patches apply applied create created delete deleted remove
removed rename move copy append insert replace replaced diff change changes changed commit commits branch
branches merge push pull clone git github issue issues pull request review reviews comment comments
document documents documentation docs readme markdown json yaml html css javascript typescript python rust go
node npm package packages module modules library libraries import export class classes method methods
interface variable variables constant return async await promise callback handler handlers stream streams
buffer buffers byte bytes bits encoding decode encode utf unicode character characters line lines column
columns row rows table tables database databases sql storage cache cached cookie cookies header headers body
payload metadata identifier id ids uuid timestamp date dates time times timezone hour hours minute minutes
second seconds day days week weeks month months year years today tomorrow yesterday current latest
canvas widget widgets dashboard panel panels view views layout display render rendered click navigate
focus close open opened closed select selected element elements selector form forms button buttons input
subagent subagents collector runtime runtimes target targets destination source sources external internal
structured unstructured pending complete completed completes success successful failed failure fallback
summary summarize summarized goal goals budget budgets plan plans planning step steps action actions
workflow workflows pipeline pipelines gateway sandbox sandboxed container containers docker image
preview approve explicit exact exactly case sensitive policy filtered deferred available configured
allowed blocked bounded picking several options questions answer answers human humans
`;

/** Syllables for pseudo-words: they teach the tokenizer subword pieces for words it never saw whole. */
export const SYLLABLES = `ab ac ad al am an ap ar as at ba be bi bo bu ca ce ci co cu da de di do du el em en er es
et ex fa fe fi fo fu ga ge gi go gu ha he hi ho hu id il im in ir is it ja jo ju ka ke ki ko la le li lo lu ma me mi
mo mu na ne ni no nu ob oc od of om on op or os ot ou pa pe pi po pu qu ra re ri ro ru sa se si so su ta te ti to tu
un up ur us va ve vi vo wa we wi wo ya yo za ze zi zo tion ment ness able ible ing ed er est ly ful less ous ive
al ic ity ize ise ure ance ence ant ent ist ism dis mis pre pro con com trans inter over under sub super semi
anti auto multi non`;

export function words(list: string): string[] {
  return list.split(/\s+/).filter((w) => w.length > 0);
}

/** More general and technical English, for broader coverage of real prompts. */
export const BROAD_WORDS = `ability absolute absolutely abstract academic accept acceptable accepted accepting accepts
accident accompany accomplish according account accurate achieve acknowledge acknowledged acquire active
actively activity actual adapt addition adequate adjust administration admit adopt advance advanced advantage
advice advise affect afford agenda aggregate agree agreement ahead aim alias align alive alternative amount
analysis analyze ancient announce announcement annual anonymous anticipate anxious apart apparent appeal
application applications apply approach appropriate approximately arbitrary archive argue arise arrival
article artificial aspect assemble assert assess asset assets assign assigned assignment assist assistance
associate association assume assumption attach attached attachment attempt attempts attend attention
attitude attribute audience author authority automatic automatically automation autonomous avatar
average award backup balance banner barrier basis batch battery behalf behave belong benefit binary
birthday blank blocker board bold bonus boost border bound boundary brand brief bright broken bug bugs
bulk bundle burden business calendar campaign cancel cancelled candidate capability capable capacity
capture careful category caution ceiling chain challenge chapter chat chats cheap choice chosen chunk
circumstance citation cite civil claim clarify clarification clause clean cleanup clear clipboard clock
collaborate collapse colleague collection combine comfortable command commercial commit committee
communicate communication community compact companion comparison compatible compile complain complex
compliance component components compose composition comprehensive compress concept concepts concern
concerns conclude conclusion concrete conduct conference confident confirm confirmation conflict confuse
connection consent consequence conservative consist consistent console constraint constraints construct
consult consume contact contract contrast contribute contributor convenient convention conventions
conversation conversations convert cooperate coordinate core corporate correction correctly corrupt
counter couple coverage crash creative credit criteria critical crucial culture curious custom customer
customize cycle daily damage dashboard deadline debate decade decision decisions declare decline
dedicated deep define definitely definition delay delegate deliberate demand demo demonstrate dense
deploy deployment deprecated depth derive descend deserve desktop despite destroy detail detailed detect
detection determine diagnose diagnostic diagram dialog dictionary digital dimension direction disable
disabled disclose discover discovery discussion dismiss dispatch display distinct distribute diverse
domain dominant download draft drag driver duplicate durable duration dynamic eager economic edition
editor effective efficient effort elaborate eligible email embed emerge emergency emoji emotion employ
enable enabled encounter encourage endpoint enforce engage engineer engineering enhance ensure enterprise
entity entry environment environments episode equivalent escape essential establish estimate evaluate
evaluation evidence evolve exact examine exceed excellent exception excerpt exchange exclude exclusive
execution exist exists expand expansion expectation expense expensive experiment expert expire explain
explanation explicit explore expose express expression extend extension extensive extract facility
factor failing fair familiar fashion feature features feedback fetch fiction figure filter final finally
financial firm fix fixed flag flexible float flush focus folder follow font forbidden forecast forget
formal format formatted former formula forward foundation frame framework frequency frequent friendly
function fund fundamental future gain gap general generally generate generated generation generic genuine
global govern grab graph grant graphic guarantee guard guess guidance guide guideline guidelines habit
handle handling hardware harm heading heavy height hidden hierarchy highlight hint history hold holiday
honest host ideal identical identify identity ignore illegal image imagine impact implement
implementation implicit imply improve improvement incident income incomplete increase incremental
independent index indicate indicator individual infer inference influence inform informal information
infrastructure initial initiative inline inner innocent input inquiry inside insight inspect inspection
install instance instant instead institution integrate integration integrity intelligence intend intent
intention interact interaction interactive interest interface intermediate interpret interrupt interval
introduce invalid investigate invitation invite involve isolated item items iterate journal judge
judgment justify keyboard kernel keyword label labels landing language large launch layer lead leader
learning legacy legal level license lifecycle lightweight limited linear linked literal load loaded
locale location lock logic logical lookup machine maintain maintenance major manage management manager
mandatory manual manually margin marker marketing massive master material matter mature meaning measure
mechanism media medium meeting member mention menu merge message messaging meta method metric middle
migrate migration milestone mind minimal minor mirror mission mistake mobile mode moderate modify moment
monthly motion multiple mutable narrative native natural navigate navigation nearly negative neutral
newline nickname noise normal notable notation note notes notice notify novel numeric objective
obligation observe obtain obvious occasion occasionally occupy odd offline ongoing online operation
operator opinion opportunity oppose opt optimize order ordinary organization organize orient origin
outcome outline overall override overrides overview owner ownership package pair paired pane paragraph
parallel parent partial participant partner pass passive paste pattern pause peer pending percent
perform performance period permanent persist persistent person personal personality perspective phase
phone phrase physical pick pin pipe pixel placeholder plain platform player plugin plugins pointer poll
popular portion portrait positive post potential practical precise predict prefix premium preparation
presence preserve press prevent primary principle print prior priority privacy private privilege
proactive problem procedure proceed produce production professional program progress project promote
prompt proof proposal propose protocol proud provide public publish purpose qualify quality quantity
quota quote radical random rank rapid rate raw reach react readable reader ready real realistic reality
realize reason reasonable recall recent recipient recognize recommend recommendation recommendations
record recover recursive recursively redirect reduce refer reference reflect refresh refuse regard region
register regular reject relate related relation relationship relationships relative relay release reliable
rely remind remote render repair repeat replace report represent request require requirement research
reserve resolve resource resources respect responsible restore restrict restriction resume retain
retrieve reveal reverse revise revision reward rich risk role roles root rough route routine rule rules
safe safety sample satisfy save scan scenario scope score script scroll section secure segment selection
sensitive separate sequence serial series serious service services shared shortcut signal signature
silent simple simultaneously site situation skill skills skip slot smart snippet social software solid
solve sort space span spec special specify speed split spot stable stack staff stage standard stale
statement static statistics steady store strategy strict structure studio style subject submit subscribe
subsequent substitute succeed success succeeds successfully suggest suggestion suitable sum summary
superseded supply support suppose surface suspect switch symbol sync syntax tag tags tail talk target
team technical technique template templates temporary tend terminal text theme thread threshold ticket
tier title toggle topic total touch track traffic transcript transfer transform transition translate
transparent travel treat trend trust truth tutorial typical ultimate unable uncertain understand unified
unique unit universal unknown unlike unlock unsupported unusual update upgrade urgent usage useful valid
validate variable variant vendor verbose verification verified verify version vertical via vibe view
virtual visible visual visualize voice volume warn wide width wiki wizard word words worker wrap wrapper
yearly zone`;

/** Everyday words of instructions, documentation and conversation. */
export const DOC_WORDS = `accessible accordingly accuracy acting addressed adjacent adjustment admin affected
afterward agreed aloud alongside already amend amount analogy annotate answered anyone apologize apparently
appear appears applicable appreciate approve areas aren arguably arrives articulate aside asks assistant
assumes attempted attributes audit authentic authorized automate awaiting awkward backend bare beforehand
behaves beneath billing blocks bookmark borrow bot bots boundaries braces brackets breaking breaks brings
broadcast browse builder builds built bullet bullets button calculate callers camera cancelled careless
carries casual caught certainly channels chaos checklist checkpoint choices chooses claims clarity clause
clever clicks closes cloud collected collision colon comma commands comments completes completion concise
conditions confidence confirmed confused connected connects considered contains contents continues
contradictory contributes controls copies corrected counts covers crafted crashes creates criterion
curated currency cursor customers dangerous dash dates deadlines debugger decides declined defaults
defined deletes delivered demands denial depends deprecated describes designed destructive detailed
detected developers diagnostics differs difficulty directive directives disabled disagree discard
discovered discussed dismissed displayed distinguish documented doubt drafts drive drops duplicates
earlier easily edge edits effectively eligible embedded emits emphasis employed empty enabled encoded
ended endless ensures entered entries equals errors escalate established estimated evaluated eventually
everyone evident exactly examples exceeded excited executes exercised existing exits expected expects
experienced expired explains explicitly exploit exposes exposing extended extra facing facts failures
fallbacks favorite fetches fields filled filters finds finished fits fixes flagged flags flows folders
follows formatted forwarded found frames friction fully functional gathered generates gets gives goes
granted greeting grounded grouped guessed handled happens happened hardcoded harmful heartbeat helpers
helps hides highlights holds hosted hosting hurt ignores images imperative imported improves includes
inferred informed initially injected inserted installs instructed intended internally interrupted
introduced invoked involves issued joined keeps kinds knows labeled lacks lasts launched layers leaks
learned lets likes limits listed lists loads located locations logged looks loses lower mainly makes
manages marked matches meaningful means mentioned merged messy methods minded misses missing mixed
modified monitors moves names narrow needed needs nested notes noticed numbered observed obtained offers
omit omitted opens orders organized outdated outputs overwrite owns paragraphs parsed passes pasted
paths pauses performed persisted picks pinned placed plans plays pointed polite posts prefers
preferences prepared presented preserves prevents printed probes proceeds produces prompts proposals
protected prototype prototypes provided provides pulled purposes queued quickly quoted raises reached
reads reasons receives recognized recorded recover recovered recurring redacted reduces references
refers refreshed refuses rejected relies remaining remembers removes renamed renders repeated replies
reported reports requested requests resets resolved responds restarts restricted retries returned
reused reusable reveals reviewed rewrite rewritten rolled rules runs safeguards sanitized saves says
scanned scheduled scratch searches seen selects sends sentences sequences serves sets shares shows
signed sizes skipped slash solved sorted sounds specified splits starts stays steps stops stored
stores streamed strings submitted succeeded suggests summaries supports sure surfaced switches takes
talks targets tasks teams tells tested tests thanks thinks titles tokens tools touches tracked tracks
treats tried tries triage troubleshoot turns typed unavailable unclear undo unexpected unrelated
unsafe unsolicited until updates uploaded uses validated values verifies views visits waits walks
wants warns watches ways whenever wishes workflows works worth wrapped writes wrote`;
