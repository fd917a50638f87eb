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
