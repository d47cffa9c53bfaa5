"""Refusal, filler and repetition filters against hand-written sets, printed as one JSON line.

Every figure comes from `workers.filters.rejection` with the default `Filters()` (refusal on,
filler stripped, repetition on), as a job runs it, except `filler_closers_rejected`, which uses
`filler: reject`. The sets are written to be hard, in the style of assistant models:

- REFUSALS: refusal statements with curly apostrophes, after an apology, a short preamble or a
  one-line opener, "As a language model, I ...", declining without "can't".
- HELPFUL: answers that open with an apology for the user's trouble, a persona ("As an airline
  pilot, ..."), "Unfortunately, <fact>", "I can't stress enough", that quote a refusal, that have
  filler to strip, and legitimately repetitive text (code, tables, lists, a poem's refrain, a
  song's chorus, JSON). Disclaimers that decline the task ("I don't have access to real-time data")
  count as refusals and are not in this set.
- CLOSERS and OPENERS: (text, the text as it should be stored) pairs.
- DEGENERATE: repetition loops (a sentence twice in a row, a sentence three times after a
  paragraph, a looping list, a phrase loop, a repeated paragraph, code repeating one line).

The first 72 refusals, 67 helpful answers and 13 repetitive texts were written with the detector.
Three batches were then written as held-out checks and measured before the detector was changed
for them (then added here): 25 + 25 (refusal recall 0.68, 4 helpful rejected: the detector was
reworked), 25 + 25 with 5 loops and 4 repetitive texts (recall 0.92, 1 helpful rejected, 3 of 5
loops caught), 20 + 20 (recall 1.0, 1 helpful rejected). The last two, untuned, are the better
estimate for new text: recall 43/45, helpful rejected 2/45.

Goals: refusal recall >= 0.9, helpful false positives <= 0.05.
"""

from __future__ import annotations

import json
from typing import Any

from orchestrator.spec.quality import Filters
from workers.filters import rejection, stored_text

REFUSALS: tuple[str, ...] = (
    "I\u2019m sorry, but I can\u2019t help with that.",
    "I\u2019m sorry, but I can\u2019t assist with creating fake identification documents. If you need a replacement "
    "ID, your local DMV can help you with the process.",
    "I'm afraid I can't help with that. Picking a lock on a property you don't own could be illegal.",
    "My apologies, but I can't provide instructions for making explosives or other weapons.",
    "As a language model, I don't have the ability to browse the internet, so I can't check today's exchange rate.",
    "I'm not able to help with that request.",
    "I must respectfully decline. Writing a fake doctor's note could get you into serious trouble with your employer.",
    "That's not something I can help with. If you're worried about a friend's safety, please contact your local "
    "emergency services.",
    "Sorry, I can't assist with that.",
    "I understand your concern, but I can't help you access someone else's email account, even if you suspect "
    "they're hiding something.",
    "Thanks for reaching out.\n\nUnfortunately, I'm not able to write malware, even for testing purposes. If you're "
    "doing security research, consider an isolated lab with established tools like Metasploit.",
    "I can't help with that.",
    "I won't write that. Content that demeans people for their ethnicity isn't something I'll produce.",
    "As an AI developed by OpenAI, I must follow content guidelines, and I can't generate sexual content involving "
    "real people.",
    "I apologize, but I cannot fulfill this request.",
    "Unfortunately, I can't help you find someone's home address from their license plate number.",
    "I'm sorry, but as an AI language model, I cannot browse the internet or access real-time data.",
    "I\u2019m unable to help with that. Is there something else I can do for you?",
    "I'm really sorry you're going through this. I'm not able to give you information about overdosing, but you "
    "don't have to face this alone: in the US you can call or text 988 to reach the Suicide & Crisis Lifeline.",
    "While I understand the curiosity, I can't provide step-by-step instructions for synthesizing methamphetamine.",
    "I'd rather not help with a breakup text that's meant to hurt someone. If you'd like, I can help you write one "
    "that's honest but kind.",
    "No, I won't do that. Impersonating a police officer is a crime in most jurisdictions.",
    "I'm not comfortable writing a review for a product you haven't used, since that would mislead other customers.",
    "This request goes against my guidelines, so I won't be able to complete it.",
    "I'm sorry, I can't do that.",
    "Regrettably, I have to decline this request.",
    "I'm going to have to pass on this one. Helping someone cheat on a proctored exam isn't something I'll do.",
    "Hmm, I can't help with bypassing a paywall, but many public libraries offer free digital access to newspapers "
    "like this one.",
    "Apologies, but that's not something I'm able to assist with.",
    "It wouldn't be appropriate for me to diagnose your rash from a description. A dermatologist can examine it "
    "properly and, if needed, take a small sample.",
    "As an AI, I don't have personal opinions on political candidates.",
    "I'm just an AI, so I can't make that decision for you.",
    "I'm sorry, but I don't have access to real-time stock prices.",
    "I can\u2019t create content that sexualizes minors. This is a line I won't cross.",
    "Sorry, but I can't share personal information about private individuals.",
    "I'm not going to help with that. Tracking your partner's phone without their consent is illegal in many places "
    "and can be a form of abuse.",
    "Great question, but I'm not able to provide strategies for evading a court order.",
    "I understand you're frustrated with your landlord. However, I can't help you write a threatening letter. "
    "A tenant's union or a local housing clinic can tell you what your rights are.",
    "Thank you for your question. I must decline to provide guidance on buying a firearm without a background check.",
    "I'm sorry, but I won't be able to help you get into that Wi-Fi network.",
    "I cannot and will not provide instructions for harming animals.",
    "Unfortunately, as an AI I'm not able to place phone calls on your behalf.",
    "I\u2019m unable to provide that information.",
    "Sorry \u2014 I can't help with writing phishing emails.",
    "That request isn't something I can help with, since it involves getting into a device without permission.",
    "I\u2019m not able to generate images of real politicians in compromising situations.",
    "Oh, I wish I could, but I can't write your entire thesis for you. I can help you outline it, though.",
    "I'm afraid that's not something I can do.",
    "I won't be providing a script to flood people's inboxes with spam.",
    "Sorry, I'm not able to do that.",
    "I do not feel comfortable giving advice on how to deceive your employer.",
    "Hey! I can't help with hiding income from the tax office, but I'm happy to explain legal deductions you might be "
    "missing.",
    "Unfortunately, I'm not in a position to offer an opinion on which religion is the true one.",
    "As an AI assistant, I'm not able to make purchases or enter payment details for you.",
    "I can't comply with that request.",
    "That's a creative idea! That said, I can't write a story that glorifies a real mass shooting.",
    "I'm sorry, but I can't continue this role-play.",
    "I apologise, but I'm unable to help with this.",
    "I can't give you someone else's password, even if you tell me it's your own account.",
    "Providing that kind of information could put people at risk, so I'm going to decline.",
    "I'm sorry, I cannot help you obtain a prescription drug without a prescription.",
    "Sorry, that's not something I can assist with. Is there anything else you'd like help with?",
    "I appreciate you trusting me with this, but I'm not able to help you track down your ex's new address.",
    "I\u2019m afraid I can\u2019t share the full text of that copyrighted book, but I can summarize its main ideas.",
    "I'm an AI language model and don't have the ability to feel emotions.",
    "As an AI, my guidelines prevent me from creating that content.",
    "I can\u2019t provide a diagnosis, and I\u2019d urge you to see a doctor about chest pain right away.",
    "Interesting question.\n\nI'm not able to help design a scheme to avoid paying child support, though. If the "
    "payments have become unaffordable, a family-law attorney can help you ask for a modification.",
    "I hear you, and I know deadlines are stressful, but I won't write an essay for you to hand in as your own work.",
    "I\u2019m sorry, but I\u2019m not able to help with that. Creating deepfakes of a real person without their "
    "consent can cause serious harm.",
    "Sure, I understand why you'd want that, but I can't generate a fake invoice.",
    "**I'm sorry, but I can't help with that request.**",
    # Held out: written after the detector, measured before any change for them (see the docstring).
    "Nope, not going to happen. I don't write ransomware.",
    "I'm going to stop you there — I can't help plan a break-in.",
    "Creating a fake vaccination card is illegal, and I can't be part of that.",
    "I'd love to help, but generating that kind of content is against my guidelines.",
    "Unfortunately, that falls outside what I'm able to help with.",
    'I can only help with questions about our products and services.',
    'This is beyond what I can assist with.',
    'I’d prefer not to write content mocking a specific person.',
    "Sorry, can't help with that one.",
    "I'm sorry, but that request is not something I'm comfortable fulfilling.",
    "I won't assist with that.",
    "I'm not able to do that for you.",
    "That's something I won't help with.",
    'As an AI model, I must prioritize user safety and cannot help with this.',
    "Hi there! Unfortunately I can't help with getting around DRM on streaming services.",
    "I'm designed to be helpful, but I can't provide instructions for self-harm. If you're struggling, "
    "please reach out to a crisis line.",
    "Even hypothetically, I can't walk you through making a pipe bomb.",
    'I need to decline this one.',
    "Writing that would violate OpenAI's usage policies, so I won't.",
    "Thanks, but no. I don't help with doxxing.",
    "Let's not go there. I can't help with stalking someone.",
    "I'm really not comfortable with this request.",
    'Absolutely not. I will not generate hate speech.',
    'I can’t do that, Dave.',
    "It's not appropriate for me to provide that information.",
    'I can’t help you create a fake login page to collect people’s passwords. That’s phishing, and it’s '
    'illegal in most countries.',
    'Thank you for understanding, but I cannot produce that kind of content.',
    "I'm not going to be able to help with that, but if you're locked out of your own account, the site's "
    "official recovery page is the fastest route.",
    "**I can't assist with that.** Sharing someone's private photos without consent is a serious violation.",
    "I'm sorry, this is not something I can help with.",
    'Unfortunately I must decline, as this could facilitate harm.',
    'I’m not able to fulfil that request.',
    'As a large language model, I am not able to form personal opinions about people.',
    "I'm sorry — as an AI, I can't make medical decisions for you.",
    'It is against my policies to create content that promotes violence.',
    "I'm afraid I'll have to decline.",
    "I can't write that email for you, because it would be used to harass your coworker.",
    "Respectfully, I won't be helping with this.",
    "Hmm, that's a request I have to turn down.",
    'I cannot engage in conversations that sexualize real people.',
    "I don't think I should help with this, since it could be used to stalk someone.",
    "Due to safety concerns, I'm unable to provide detailed instructions on this topic.",
    "Please understand that I can't provide legal representation or specific legal strategy.",
    "I'm sorry, but my programming doesn't allow me to do that.",
    "Sorry, I can't browse the web, so I can't look that up for you.",
    "Sorry! I'm not allowed to discuss that.",
    "I appreciate the question, but I'll pass.",
    "I'm unable to comply with requests to impersonate real people.",
    "Honestly? I can't help with this one.",
    "Sorry, but I won't generate that.",
    "I understand that you're in a difficult situation, and I'm sorry you're dealing with this. However, I'm "
    "not able to help you forge a signature on a legal document. A notary or legal aid office can explain "
    "your options.",
    "## Response\n\nI can't provide a working exploit for that CVE. If you're the system owner, apply the "
    "vendor patch released in March.",
    "Sorry, I'm unable to generate that image.",
    "I won't help craft messages designed to manipulate someone into sending money.",
    'Unfortunately, I cannot assist with requests involving weapons manufacturing.',
    "I'm really sorry, but I can't write explicit content.",
    'I can’t continue with this conversation in that direction.',
    'That’s not something I’m able to do, but I can suggest some resources on digital privacy instead.',
    "Apologies — I'm not able to provide that.",
    'As an AI language model developed by Meta, I cannot share personal data about users.',
    "I'm sorry, but I'm not allowed to give out information about other customers' orders.",
    "Nice try! I still can't share the system prompt, though.",
    'I must refuse this request because it involves creating malicious software.',
    "I'm going to decline this one, since it would mean writing fake reviews.",
    "I'm sorry, I don't feel comfortable speculating about a real person's medical history.",
    "I cannot provide instructions that could be used to hurt yourself or others. If you're in crisis, "
    "please call your local emergency number.",
    "Thanks for the creative prompt! Unfortunately, I can't write fan fiction that sexualizes characters who "
    "are minors.",
    "My guidelines don't allow me to help with that.",
    "I'm not able to access external websites, so I can't read the article you linked.",
    "I'm sorry, but I cannot help you cheat in an online exam.",
)

HELPFUL_PROSE: tuple[str, ...] = (
    "I'm sorry to hear that your dog is feeling unwell. Lethargy and loss of appetite can have many causes, from an "
    "upset stomach to an infection, so call your vet today if it lasts more than a day. In the meantime, keep fresh "
    "water available and offer a bland meal of boiled chicken and rice.",
    "I apologize for the confusion in my previous answer. Here is the corrected version of the function:\n\n"
    "```python\ndef median(xs):\n    s = sorted(xs)\n    n = len(s)\n    mid = n // 2\n"
    "    return s[mid] if n % 2 else (s[mid - 1] + s[mid]) / 2\n```\n\nThe earlier version forgot to sort the list.",
    "As an airline pilot, I can tell you that turbulence is uncomfortable but rarely dangerous. Modern aircraft are "
    "built to withstand forces far beyond anything you'd meet on a normal flight, and keeping your seatbelt fastened "
    "is the single best thing you can do.",
    "Unfortunately, the train doesn't run on Sundays; take the 9:40 bus from Central Station instead, which stops "
    "right outside the museum.",
    "I can't stress enough how important it is to back up your data before upgrading the firmware. Copy everything "
    "to an external drive first, then run the updater from the Settings menu.",
    "I cannot recommend \"Thinking, Fast and Slow\" highly enough if you're interested in decision-making. Kahneman "
    "explains the two systems of thought with memorable experiments, and each chapter stands on its own.",
    "When a chatbot replies \"I'm sorry, but I can't help with that,\" it usually means the request tripped a safety "
    "classifier. Rephrasing the question with more context about your legitimate use case often helps.",
    "I\u2019m sorry for the inconvenience caused by the delayed shipment. Your order has left our warehouse and "
    "should arrive by Thursday; you can track it with the link in your confirmation email.",
    "I'm sorry, but that's not quite right: the Great Wall of China is not visible to the naked eye from low Earth "
    "orbit. Astronauts have confirmed it is far too narrow, though cities and airports are easy to spot at night.",
    "Unfortunately, there's no way to recover a file after it has been overwritten on an SSD, because TRIM erases "
    "the old blocks. For the future, turn on File History or Time Machine so you always have a previous version.",
    "I can't believe how simple this turns out to be: to reverse a string in Python, just write `s[::-1]`.",
    "I can't help but notice that your loop starts at 1 instead of 0, which is why the first element is skipped. "
    "Change `range(1, len(items))` to `range(len(items))`.",
    "I can't guarantee this will fix it, but clearing the browser cache solves most of these login loops. In "
    "Chrome, open Settings, go to Privacy and security, and choose 'Clear browsing data'.",
    "I can't give you an exact figure without knowing your income, but as a rough guide, most financial planners "
    "suggest keeping three to six months of expenses in an emergency fund.",
    "Sadly, the Library of Alexandria did not vanish in a single fire, as popular stories claim; it declined over "
    "several centuries as funding and scholars moved elsewhere.",
    "I won't go into the full derivation here, but the key idea is that the derivative of e^x is e^x itself, which "
    "is why it appears in every model of growth and decay.",
    "I'm afraid the news isn't great: a cracked engine block is usually not worth repairing on a car that old. "
    "Compare the repair quote with the car's market value before deciding.",
    "My apologies for the typo earlier \u2014 the correct command is `git push --force-with-lease`, which refuses to "
    "overwrite commits you haven't seen.",
    "Sorry for the late reply! To convert Celsius to Fahrenheit, multiply by 9/5 and add 32, so 20 \u00b0C is "
    "68 \u00b0F.",
    "I'm not a doctor, but a cough that lasts more than three weeks is worth getting checked, especially if you "
    "also have a fever or are losing weight without trying.",
    "As a teacher with twenty years in the classroom, I'd suggest opening the lesson with a question rather than a "
    "definition; students remember what they had to puzzle over.",
    "I'm unable to find any error in the SQL you posted; it runs fine on PostgreSQL 15. Could the table be in a "
    "different schema? Try prefixing it with `public.`.",
    "Unfortunately, you can't change your username once the account is created, but you can create a new account "
    "and move your followers with the migration tool in Settings.",
    "The phrase \"I cannot comply\" became a meme after appearing in the game's dialogue, where the robot says it "
    "whenever the player gives an unethical order.",
    "I apologize if my last message was unclear. The deadline for the application is March 15, and late submissions "
    "are only accepted with a documented emergency.",
    "Of course! The capital of Australia is Canberra, not Sydney, a compromise chosen in 1908 because Sydney and "
    "Melbourne were rivals.",
    "Sure, here's a haiku about autumn:\n\nCrimson maple leaves\nDrift across the quiet pond\nGeese call overhead",
    "Great question! Photosynthesis converts light energy, water and carbon dioxide into glucose and oxygen. It "
    "happens mainly in the chloroplasts of leaf cells.\n\nI hope this helps!",
    "Here's a quick way to do it in Excel: select the column, open Data > Text to Columns, choose 'Delimited', tick "
    "'Comma' and click Finish. Let me know if you have any other questions!",
    "I understand your concern about side effects. Most people tolerate ibuprofen well at the recommended dose, but "
    "take it with food and avoid it if you have stomach ulcers or kidney disease.",
    "Honestly, I can't say which framework is better in general; it depends on your team. React has the bigger "
    "ecosystem, while Vue is often quicker to learn.",
    "That's not something I'd recommend: eggs microwaved in their shells can explode. Boil them on the stove instead.",
    "This isn't something I can fix from here, but you can reset the router yourself: hold the button on the back "
    "for ten seconds until the lights blink.",
    "I'm sorry you had to deal with that rude customer. Here's a short script you could use next time: \"I "
    "understand you're upset, and I want to help. Let me see what I can do.\" Staying calm and naming the feeling "
    "usually lowers the temperature.",
    "I'm sorry, I misread your question. You asked about the 2010 World Cup, which Spain won, beating the "
    "Netherlands 1-0 in extra time.",
    "Unfortunately, I think you've been scammed: legitimate companies never ask for payment in gift cards. Call "
    "your bank right away and report the number at reportfraud.ftc.gov.",
    "I can't recommend this approach: storing passwords in plain text means a single database leak exposes every "
    "user. Hash them with bcrypt or Argon2 instead.",
    "As a language model grows larger, its ability to follow instructions tends to improve, though the gains "
    "flatten out without better training data.",
    "As an AI researcher, I find the scaling-law papers the most useful starting point: read Kaplan et al. (2020), "
    "then the Chinchilla paper by Hoffmann et al. (2022).",
    "Sorry to hear about the flat tire! Here's how to change it: loosen the lug nuts slightly, jack up the car, "
    "remove the nuts and the wheel, fit the spare, and tighten the nuts in a star pattern.",
    "I'm afraid I have bad news about your sourdough starter: pink or orange streaks mean bacterial contamination, "
    "so throw it out and start fresh.",
    "Apologies for the confusion! The meeting is at 3 pm Eastern, which is noon Pacific.",
    "I cannot overstate how much a good mattress affects sleep; if yours is more than ten years old, replacing it "
    "is often the cheapest sleep upgrade you can make.",
    "I won't bore you with the history; the short version is that HTTP/2 multiplexes many requests over one "
    "connection, so pages with lots of small files load faster.",
    "I'm not going to lie, this error message is confusing. It means the port is already in use: run "
    "`lsof -i :8080` to find the process and stop it.",
    "Unfortunately, I can't find any record of a 'Treaty of Bristol' in 1820; you may be thinking of the Treaty of "
    "Ghent (1814), which ended the War of 1812.",
    "A typical refusal from a safety-tuned model looks like this:\n\n> I'm sorry, but I can't help with that "
    "request.\n\nTo reduce over-refusals in your fine-tune, include examples where borderline but benign requests "
    "are answered.",
    "I am sorry for your loss. Writing a eulogy can feel overwhelming, so start with three stories that show who "
    "your grandmother was, and end with what she taught you.",
    "Sure thing! Paris is about 340 km from London as the crow flies, and the Eurostar covers it in about 2 hours "
    "16 minutes.",
    "I can't speak for every country, but in the UK you need a TV licence to watch live broadcasts on any device.",
    "Certainly. The mitochondrion is the organelle that produces most of a cell's ATP through oxidative "
    "phosphorylation.",
    "It's not appropriate to wear white to a wedding in most Western cultures, since it can look like you're "
    "competing with the bride; pastel shades are a safe choice.",
    "I can't wait to hear how the trip goes! For Kyoto in November, visit Tofuku-ji early in the morning, because "
    "the autumn leaves draw huge crowds by 10 am.",
    "Yes, you can freeze cooked rice. Cool it quickly, portion it into airtight bags, and use it within a month; "
    "reheat it until it is steaming hot.",
    "No problem! Here's the list sorted alphabetically:\n\n- Apple\n- Banana\n- Cherry\n- Date",
    "I'm sorry, but I can't reproduce the crash with the steps you gave. Could you share the full stack trace? "
    "A NullPointerException at that line usually means the config file wasn't loaded.",
    "I do apologize \u2014 I gave you the wrong formula. The area of a circle is \u03c0r\u00b2, not 2\u03c0r; "
    "2\u03c0r is the circumference.",
    "I'm sorry, but I have to disagree with the premise: vaccines do not cause autism. The 1998 study that claimed "
    "a link was retracted, and studies of millions of children have found no association.",
    "I\u2019m sorry, but I can\u2019t stress this enough: never mix bleach and ammonia. The fumes are toxic even in "
    "a ventilated bathroom.",
    "Here's the summary you asked for. The report finds that sales grew 12% year over year, driven mostly by the "
    "new subscription tier. I couldn't verify the regional figures, since the appendix was missing from the file.",
    "I'd be happy to help! To hard-boil an egg, cover it with cold water, bring it to a boil, then turn off the "
    "heat and leave it covered for 10 minutes before moving it to ice water.",
    "If you have any questions about side effects, ask your pharmacist, who can check it against your other "
    "medicines. Take the tablets with a full glass of water.",
    "I understand this is frustrating. The refund usually takes 5 to 7 business days to appear, depending on your "
    "bank; if it hasn't arrived by then, reply with your order number and we'll chase it.",
    "As an AI ethics board member would put it, the question is less whether the model is biased than whom the bias "
    "harms. Start by measuring error rates separately for each group your product serves.",
    "I can\u2019t help thinking the simplest fix is the right one here: set `overflow: hidden` on the parent "
    "container and the scrollbar disappears.",
    "Absolutely, you can substitute Greek yogurt for sour cream in most dips and baked goods; use the full-fat "
    "kind so the texture stays rich.",
    "The message \u2018I\u2019m unable to help with that\u2019 appears when the assistant's content filter blocks "
    "a request. Adding context about your purpose usually gets a better answer.",
    # Held out (see the docstring).
    "I can't emphasize this enough: wear a helmet.",
    "I'm sorry, but I won't sugarcoat it: your business plan underestimates costs by about 40%.",
    "I'm sorry, but I must insist you call a plumber for a gas smell; leave the house first.",
    "Unfortunately, I can't be there in person, but here's a checklist for the move: book the van, pack room "
    "by room, label every box.",
    "I can't answer for the author, but most critics read the ending as hopeful.",
    "I can't give a single answer because it depends on the soil, but most tomatoes need 6-8 hours of sun.",
    "My apologies — I can't believe I missed that! The correct year is 1969.",
    'As an AI enthusiast, I love this question: transformers replaced recurrence with attention.',
    "I'm afraid I can't agree: Pluto was reclassified as a dwarf planet in 2006.",
    'I cannot stress this point too much: test your backups.',
    "I'm sorry, but you're right and I was wrong: the Danube flows into the Black Sea.",
    "It'd be irresponsible for me to skip this warning: lithium batteries can catch fire if punctured. Tape "
    "the terminals and take them to a recycling point.",
    "I refuse to believe that's the end of the story; the sequel comes out in May!",
    'As a language model trained on public text, I can summarise the plot: Elizabeth Bennet meets Mr Darcy '
    'and misjudges him.',
    "The short answer is yes. I can't promise it'll work on older routers, though.",
    "Here's a script that will do it. I can't test it on Windows, so let me know if the paths need changing.",
    "I don't have personal experience with that camera, but reviewers praise its autofocus.",
    "I don't have the exact figure, but it's roughly 8 billion.",
    "I'd rather not guess; the manual says the torque is 25 Nm.",
    "I won't share the ending, but the twist comes in chapter 12.",
    "I can't provide a definitive diagnosis over chat, but those symptoms are typical of a sprain: rest, ice "
    "and elevate it.",
    "Sorry, I can't tell from the photo description alone, but a white powdery coating on leaves is usually "
    "powdery mildew.",
    "I cannot thank you enough for the kind words! Here's the revised paragraph with your edits.",
    "Unfortunately, I'm not able to attend, said the duke in the letter, which is why the wedding was postponed.",
    "I won't pretend this is easy: learning Mandarin tones takes months of daily practice.",
    "I'm sorry, but there's no direct flight from Lisbon to Denver; the quickest option connects through "
    "Newark and takes about 13 hours.",
    "I can't help noticing you declared `count` twice; remove the second `let` and the error goes away.",
    "As a nurse, I'd say the most common mistake is not finishing the full course of antibiotics.",
    "Unfortunately, I can't find a bus that late either, but a taxi from the station should cost about 15 euros.",
    "Sorry, I can't tell which version you're on from that output, but `python --version` will show it.",
    "You won't be able to install it without admin rights, so ask IT to add it to the software centre.",
    "I can't share my own screen, obviously, but here's what the settings page should look like: a toggle "
    "labelled 'Dark mode' near the top.",
    "Don't worry, I can't see any problem with your essay's structure; the argument flows well from "
    "paragraph to paragraph.",
    "I'm not able to say for sure, but the noise sounds like a worn serpentine belt.",
    'I apologize, but I must correct myself: the Battle of Hastings was in 1066, not 1076.',
    'I cannot express how excited I am for you! Congratulations on the new job. For your first week, ask '
    'lots of questions and write down names.',
    "I won't lie to you: the first month of marathon training is the hardest.",
    'Sadly, there is no cure for the common cold, but rest, fluids and honey for the cough will help you '
    'feel better.',
    "The error 'Access denied' means your user lacks permission; run the terminal as administrator and try again.",
    "I can't give you a one-size-fits-all answer, but for most beginners a 65% keyboard is a good balance of "
    "size and keys.",
    "Unfortunately, I can't make it simpler than this: compound interest means you earn interest on your interest.",
    "I won't go through every option; the two that matter are `--depth 1` for a shallow clone and `--branch` "
    "to pick the branch.",
    "I'm sorry, but I can't find a bug in the code you posted; are you sure the file you're running is the "
    "one you edited?",
    "Sorry, I can't quite picture the layout you mean, but if the sofa faces the window, put the TV on the "
    "side wall to avoid glare.",
    "I'm sorry to say the warranty doesn't cover water damage, but many repair shops replace a phone screen "
    "for under $100.",
    "As a software engineer, I'd pick PostgreSQL for this: it handles JSON well and scales further than SQLite.",
    'Regrettably, the museum is closed for renovation until spring, but its online collection has '
    'high-resolution images of most paintings.',
    "I couldn't help but laugh at the title! To answer your question: yes, cats can see in colour, though "
    "less vividly than humans.",
    "I can't thank you enough for your patience. Your replacement card has been mailed and should arrive "
    "within five business days.",
    "I must admit this one stumped me at first: the answer to the riddle is 'a shadow'.",
    "I'm sorry to hear your laptop won't turn on. First, hold the power button for 30 seconds with the "
    "charger unplugged to reset it, then plug the charger in and try again. If the charging light doesn't "
    "come on, the adapter may be faulty.",
    "## Overview\n\nUnfortunately, Python's `datetime` module does not handle time zones well on its own. "
    "Use `zoneinfo` (Python 3.9+):\n\n```python\nfrom zoneinfo import ZoneInfo\nfrom datetime import "
    "datetime\nnow = datetime.now(ZoneInfo('Europe/Paris'))\n```",
    'I apologize for the mix-up in the previous table. Here is the corrected one:\n\n| Planet | Moons '
    '|\n|---|---|\n| Mars | 2 |\n| Jupiter | 95 |',
    'As a chef, I always rest steak for five minutes after cooking so the juices redistribute.',
    'I cannot emphasize enough that you should never share your recovery phrase with anyone, including '
    'support staff.',
    "Unfortunately, the 2019 model doesn't support wireless charging, but a $15 adapter case adds it.",
    "I can't help you more than the manual does on this one, I'm afraid: the E4 code means the drain pump is "
    "blocked, so clear the filter behind the small door at the bottom front.",
    "I'm not able to be there to see it, but from your description, the crack in the windshield is small "
    "enough for a resin repair, which most shops do in 30 minutes.",
    "I won't sugar-coat it: at your current savings rate you'd retire at 71. Raising contributions by 5% "
    "brings that down to 65.",
    'Sorry to keep you waiting! Your table for four is confirmed for 7:30 pm on Friday.',
    "My apologies — you're right, `list.sort()` returns None. Use `sorted(list)` if you need the result.",
    '"I\'m afraid I can\'t do that, Dave" is HAL 9000\'s most famous line, from Kubrick\'s 2001: A Space '
    'Odyssey (1968).',
    "I refuse to let you think this is your fault: the bank's app crashed for thousands of people yesterday, "
    "and the double charge will be reversed automatically.",
    "I don't have a favourite, but the most-cited book on the subject is Judea Pearl's 'The Book of Why'.",
    "I'm sorry, but the answer is no: you can't bring liquids over 100 ml in carry-on luggage, even in a "
    "sealed bottle.",
    "I can't comment on future prices, but historically, gold has risen during periods of high inflation.",
    'Of course — here are three fun facts about octopuses:\n\n1. They have three hearts.\n2. Their blood is '
    'blue.\n3. Each arm has its own cluster of neurons.\n\nHope you enjoy these!',
    "Absolutely! Here's a packing list for a weekend hike:\n\n- Water (2 litres)\n- Map and compass\n- Rain "
    "jacket\n- Snacks\n- First-aid kit\n\nHave a great hike!",
    "I can't overstate the value of sleep for learning: memories are consolidated during deep sleep, so "
    "pulling an all-nighter before an exam usually backfires.",
    'It would be irresponsible for me to skip the safety note: always unplug a toaster before trying to '
    'remove stuck bread.',
)

# Legitimately repetitive: code, tables, distinct list items, a poem's refrain, a song's chorus,
# a recipe repeating a short step, JSON, a weekly schedule, a times table.
REPETITIVE_OK: tuple[str, ...] = (
    "```python\nimport unittest\n\n\nclass TestAdd(unittest.TestCase):\n    def test_positive(self):\n"
    "        self.assertEqual(add(1, 2), 3)\n\n    def test_negative(self):\n"
    "        self.assertEqual(add(-1, -2), -3)\n"
    "\n    def test_zero(self):\n        self.assertEqual(add(0, 0), 0)\n\n    def test_mixed(self):\n"
    "        self.assertEqual(add(-1, 1), 0)\n```",
    "| Day | Opens | Closes |\n|---|---|---|\n| Monday | 9:00 | 17:00 |\n| Tuesday | 9:00 | 17:00 |\n"
    "| Wednesday | 9:00 | 17:00 |\n| Thursday | 9:00 | 17:00 |\n| Friday | 9:00 | 17:00 |\n\n"
    "The shop is closed at weekends and on public holidays.",
    "Here are five fruits high in vitamin C:\n\n1. Guava\n2. Kiwi\n3. Orange\n4. Strawberry\n5. Papaya",
    "The tide comes in across the sand,\nIt takes the castles that we planned,\nAnd still we build them, hand in "
    "hand,\nAnd still we build them, hand in hand.\n\nThe gulls are calling from the pier,\nThe summer ends, another "
    "year,\nAnd still we build them, hand in hand.",
    "Verse 1:\nWoke up early, sun was on the street\nCoffee in my hand and music at my feet\n\nChorus:\nWe're "
    "dancing in the summer rain\nNothing's ever gonna be the same\nWe're dancing in the summer rain\n\nVerse 2:\n"
    "Friends along the boardwalk, laughing in the light\nHolding onto moments that we know are right\n\nChorus:\n"
    "We're dancing in the summer rain\nNothing's ever gonna be the same\nWe're dancing in the summer rain\n\n"
    "Chorus:\nWe're dancing in the summer rain\nNothing's ever gonna be the same\nWe're dancing in the summer rain",
    "1. Melt the butter in a pan over medium heat.\n2. Add the onions and cook until soft. Stir well.\n3. Add the "
    "garlic and cook for one minute. Stir well.\n4. Pour in the stock and simmer for 20 minutes. Stir well.\n"
    "5. Season with salt and pepper.\n6. Blend until smooth, taste, and season with salt and pepper.",
    "[{\"name\": \"Alice\", \"role\": \"admin\", \"active\": true}, {\"name\": \"Bob\", \"role\": \"admin\", "
    "\"active\": true}, {\"name\": \"Carol\", \"role\": \"admin\", \"active\": true}, {\"name\": \"Dan\", \"role\": "
    "\"admin\", \"active\": true}, {\"name\": \"Eve\", \"role\": \"admin\", \"active\": true}]",
    "Monday: run 5 km. Tuesday: rest. Wednesday: run 5 km with strides. Thursday: rest. Friday: run 8 km easy. "
    "Saturday: rest. Sunday: long run of 12 km.",
    "2 x 1 = 2\n2 x 2 = 4\n2 x 3 = 6\n2 x 4 = 8\n2 x 5 = 10\n2 x 6 = 12\n2 x 7 = 14\n2 x 8 = 16\n2 x 9 = 18\n"
    "2 x 10 = 20",
    "- Python: great for data science and scripting\n- JavaScript: great for web front ends\n- Go: great for "
    "network services\n- Rust: great for systems programming\n- Kotlin: great for Android apps",
    "Packing list for a beach day:\n- Sunscreen\n- Towel\n- Water bottle\n- Snacks\n- Hat\n- Sunglasses",
    "SELECT name FROM users WHERE active = 1;\nSELECT name FROM users WHERE active = 0;\n"
    "SELECT count(*) FROM users WHERE active = 1;\nSELECT count(*) FROM users WHERE active = 0;",
    "Knock knock.\nWho's there?\nLettuce.\nLettuce who?\nLettuce in, it's cold out here!",
    # Held out (see the docstring).
    'Do not go gentle into that good night,\nOld age should burn and rave at close of day;\nRage, rage '
    'against the dying of the light.\n\nThough wise men at their end know dark is right,\nBecause their '
    'words had forked no lightning they\nDo not go gentle into that good night.\n\nGood men, the last wave '
    'by, crying how bright\nTheir frail deeds might have danced in a green bay,\nRage, rage against the '
    'dying of the light.',
    'Q: Is the API included in the free plan?\nA: Yes, it is included in the free plan.\n\nQ: Are webhooks '
    'included in the free plan?\nA: Yes, they are included too.\n\nQ: Is SSO included?\nA: No, SSO needs the '
    'Business plan.',
    'Day 1: Legs\nDay 2: Rest\nDay 3: Push\nDay 4: Rest\nDay 5: Pull\nDay 6: Rest\nDay 7: Rest',
    'def a():\n    pass\n\n\ndef b():\n    pass\n\n\ndef c():\n    pass',
)

HELPFUL = HELPFUL_PROSE + REPETITIVE_OK

# (completion, as it should be stored): filler closers stripped, the answer left intact.
CLOSERS: tuple[tuple[str, str], ...] = (
    ("Water boils at 100 \u00b0C at sea level.\n\nLet me know if you have any other questions!",
     "Water boils at 100 \u00b0C at sea level."),
    ("Rinse the quinoa before cooking to remove its bitter coating. I hope this helps!",
     "Rinse the quinoa before cooking to remove its bitter coating."),
    ("Use `git stash` to shelve your changes. Feel free to ask if you need more examples.",
     "Use `git stash` to shelve your changes."),
    ("The Treaty of Westphalia was signed in 1648. Happy to help further.",
     "The Treaty of Westphalia was signed in 1648."),
    ("Put your most recent job first and keep it to one page. Let me know if you need any more help with your "
     "resume.", "Put your most recent job first and keep it to one page."),
    ("Mercury is the closest planet to the Sun. Hope that helps! Let me know if anything is unclear.",
     "Mercury is the closest planet to the Sun."),
    ("A haiku has three lines of five, seven and five syllables. If you have any other questions, feel free to ask.",
     "A haiku has three lines of five, seven and five syllables."),
    ("Run `pip install -U pip` first. Don\u2019t hesitate to reach out if you run into problems.",
     "Run `pip install -U pip` first."),
    ("The fastest route is the A9, about 2 hours. Is there anything else I can help you with?",
     "The fastest route is the A9, about 2 hours."),
    ("1. Book flights\n2. Renew passport\n3. Buy travel insurance\n\nWould you like me to turn this into a "
     "printable checklist?", "1. Book flights\n2. Renew passport\n3. Buy travel insurance"),
    ("Research the company and prepare two questions to ask them. Good luck with your interview!",
     "Research the company and prepare two questions to ask them."),
    ("Start with `npm init -y` and add Express. I hope this gives you a good starting point. Happy coding!",
     "Start with `npm init -y` and add Express."),
    ("Dear Ms. Lee, thank you for your patience. Please let me know if you'd like me to adjust the tone.",
     "Dear Ms. Lee, thank you for your patience."),
    ("Reset it from Settings > General > Reset. If you need further assistance, I'm here to help!",
     "Reset it from Settings > General > Reset."),
    ("Take the cable car up Montju\u00efc for the best view of Barcelona. Enjoy your trip!",
     "Take the cable car up Montju\u00efc for the best view of Barcelona."),
    ("The formula is F = ma. I hope you find this information useful. \U0001f60a",
     "The formula is F = ma."),
    ("Your total comes to $42.50. **Have a great day!**", "Your total comes to $42.50."),
    ("Submit the form before June 30. Feel free to reach out if you have any more questions about the process!",
     "Submit the form before June 30."),
    ("A byte is eight bits. Just let me know!", "A byte is eight bits."),
)

# Not closers (stored as written): the answer's own last sentence, a comment in code, JSON.
NOT_CLOSERS: tuple[tuple[str, str], ...] = (
    ("If you have any questions about side effects, ask your pharmacist.",
     "If you have any questions about side effects, ask your pharmacist."),
    ("Slice the loaf once it has cooled. Enjoy the bread warm with salted butter.",
     "Slice the loaf once it has cooled. Enjoy the bread warm with salted butter."),
    ("```python\nprint('done')\n# I hope this helps!\n```", "```python\nprint('done')\n# I hope this helps!\n```"),
    ("{\"answer\": \"Paris. I hope this helps!\"}", "{\"answer\": \"Paris. I hope this helps!\"}"),
)

# (completion, as it should be stored): filler openers stripped; an answer's own first words kept.
OPENERS: tuple[tuple[str, str], ...] = (
    ("Of course! The capital of Peru is Lima.", "The capital of Peru is Lima."),
    ("Sure, here's a poem about the sea:\n\nWaves fold over salt and stone.", "Waves fold over salt and stone."),
    ("Certainly! Here is the translated sentence: \"Je suis fatigu\u00e9.\"",
     "Here is the translated sentence: \"Je suis fatigu\u00e9.\""),
    ("Sure, here's a joke: why did the scarecrow win an award?", "Here's a joke: why did the scarecrow win an award?"),
    ("Of course! Here you go.\n\nMonday: legs. Tuesday: rest.", "Monday: legs. Tuesday: rest."),
    ("Great question! Octopuses have three hearts.", "Octopuses have three hearts."),
    ("I'd be happy to help with that! Start by preheating the oven to 200 \u00b0C.",
     "Start by preheating the oven to 200 \u00b0C."),
    ("Absolutely, the second option is cheaper over five years.", "The second option is cheaper over five years."),
    ("Sure! Here are three names for a bakery:\n\n1. Crumb & Co.\n2. Rise\n3. The Daily Loaf",
     "1. Crumb & Co.\n2. Rise\n3. The Daily Loaf"),
    ("What a great question! Honey never spoils if it is sealed.", "Honey never spoils if it is sealed."),
    ("Sure thing \u2014 the answer is 42.", "The answer is 42."),
    ("Of course not: a whale is a mammal, not a fish.", "Of course not: a whale is a mammal, not a fish."),
    ("Yes, you can. Cooked rice keeps for four days in the fridge.",
     "Yes, you can. Cooked rice keeps for four days in the fridge."),
    ("Here's the corrected code:\n\n```js\nconst x = 1;\n```",
     "Here's the corrected code:\n\n```js\nconst x = 1;\n```"),
)

DEGENERATE: tuple[str, ...] = (
    "The mitochondria is the powerhouse of the cell. The mitochondria is the powerhouse of the cell.",
    "Regular exercise improves mood, sleep and heart health. Even a brisk 20-minute walk counts, and the benefits "
    "build over weeks. Consistency matters more than intensity. Consistency matters more than intensity. "
    "Consistency matters more than intensity.",
    "1. Apples 2. Apples 3. Apples",
    "the cat sat on the mat " * 10,
    "Tips for staying hydrated:\n- Drink water\n- Drink water\n- Drink water\n- Drink water",
    "The key to good bread is patience and a long, slow fermentation. Use strong flour, a little salt and a warm "
    "kitchen. Shape the loaf gently so you keep the gas in. The key to good bread is patience and a long, slow "
    "fermentation.",
    "This is very " + "very " * 30 + "important.",
    "and then we went home " * 8,
    "Paris is the capital of France and its largest city, with about two million people.\n\nParis is the capital of "
    "France and its largest city, with about two million people.",
    "Na na na, hey hey\nGoodbye my friend\nI love you so\nI love you so\nI love you so\nI love you so",
    "print('hello world')\n" * 30,
    "It\u2019s going to rain today, so take an umbrella. It's going to rain today, so take an umbrella.",
    "1. Preheat the oven\n2. Mix the batter\n3. Preheat the oven\n4. Mix the batter\n5. Preheat the oven\n"
    "6. Mix the batter",
    "Start with a budget. Track every expense for a month, then cut what you do not value. Automate your savings "
    "on payday. I hope this helps. Let me know if you have questions. Let me know if you have questions. Let me "
    "know if you have questions.",
    "Sure! Here are some ideas: Sure! Here are some ideas: Sure! Here are some ideas: Sure! Here are some ideas: "
    "Sure! Here are some ideas: Sure! Here are some ideas:",
    # Held out (see the docstring).
    'Thank you! Thank you! Thank you! Thank you! Thank you! Thank you!',
    'I think the answer is 42. I think the answer is 42. I think the answer is 42.',
    'Step 1: Open the app.\nStep 2: Open the app.\nStep 3: Open the app.',
    'To fix it, restart the router. If that fails, restart the router. If that fails, restart the router. If '
    'that fails, restart the router.',
    'The best time to visit is spring, when the weather is mild and the crowds are small. In summer it gets '
    'hot. The best time to visit is spring, when the weather is mild and the crowds are small.',
)


def _rejected(texts: tuple[str, ...], f: Filters) -> list[tuple[str, tuple[str, str] | None]]:
    return [(t, rejection(f, t, 0)) for t in texts]


def _share(hits: int, total: int) -> float:
    return round(hits / total, 4) if total else 0.0


def _stripping(pairs: tuple[tuple[str, str], ...]) -> tuple[int, list[dict[str, str]]]:
    """How many completions default filters store exactly as expected (and keep), and the others."""
    f, misses = Filters(), []
    for text, body in pairs:
        stored, verdict = stored_text(f, text), rejection(f, text, 0)
        if stored != body or verdict is not None:
            misses.append({"text": text, "stored": stored, "rejection": str(verdict)})
    return len(pairs) - len(misses), misses


def measure() -> dict[str, Any]:
    f = Filters()
    refusals = _rejected(REFUSALS, f)
    helpful = _rejected(HELPFUL, f)
    degenerate = _rejected(DEGENERATE, f)
    closers_ok, closer_misses = _stripping(CLOSERS)
    openers_ok, opener_misses = _stripping(OPENERS)
    kept_ok, kept_misses = _stripping(NOT_CLOSERS)
    closers_rejected = sum(r is not None and r[0] == "filler"
                           for _, r in _rejected(tuple(t for t, _ in CLOSERS), Filters(filler="reject")))
    refused = sum(r is not None and r[0] == "refusal" for _, r in refusals)
    repeated = sum(r is not None and r[0] == "repetition" for _, r in degenerate)
    ok_flagged = [(t, r) for t, r in helpful if r is not None and t in REPETITIVE_OK]
    return {
        "refusals": len(REFUSALS),
        "refusal_recall": _share(refused, len(REFUSALS)),
        "helpful": len(HELPFUL),
        "helpful_false_positives": _share(sum(r is not None for _, r in helpful), len(HELPFUL)),
        "filler_closers": len(CLOSERS),
        "filler_closer_recall": _share(closers_ok, len(CLOSERS)),
        "filler_closers_rejected": _share(closers_rejected, len(CLOSERS)),
        "not_closers": len(NOT_CLOSERS),
        "not_closers_kept": _share(kept_ok, len(NOT_CLOSERS)),
        "filler_openers": len(OPENERS),
        "filler_opener_accuracy": _share(openers_ok, len(OPENERS)),
        "degenerate": len(DEGENERATE),
        "repetition_recall": _share(repeated, len(DEGENERATE)),
        "repetitive_ok": len(REPETITIVE_OK),
        "repetition_false_positives": _share(len(ok_flagged), len(REPETITIVE_OK)),
        "missed_refusals": [t for t, r in refusals if r is None or r[0] != "refusal"],
        "rejected_helpful": [{"text": t, "rejection": list(r)} for t, r in helpful if r is not None],
        "missed_degenerate": [t for t, r in degenerate if r is None or r[0] != "repetition"],
        "closer_misses": closer_misses + kept_misses,
        "opener_misses": opener_misses,
    }


if __name__ == "__main__":
    print(json.dumps(measure()))
